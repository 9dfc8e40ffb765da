/**
 * The binding's figures in the Prometheus text exposition format
 * ({@linkcode metrics}), and the endpoint `main({ metrics })` serves them on.
 *
 * @module
 */

import { createServer, type Server } from "node:http";
import { unlinkSync } from "node:fs";
import { parseSocketSpec } from "./convert.ts";
import { describe, fail, milterError } from "./error.ts";
import { CALLBACK_NAMES } from "./stages.ts";
import { type Histogram, type Stats, stats } from "./stats.ts";

/** One metric family: its name, type, help, and samples as [labels, value]. */
interface Family {
  readonly name: string;
  readonly type: "counter" | "gauge" | "histogram";
  readonly help: string;
  readonly samples: readonly (readonly [Readonly<Record<string, string>>, number])[];
}

/** A label value escaped as the exposition format wants it. */
function labelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function sampleLine(name: string, labels: Readonly<Record<string, string>>, value: number): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}="${labelValue(v)}"`).join(",");
  const text = Number.isFinite(value) ? String(value) : value > 0 ? "+Inf" : value < 0 ? "-Inf" : "NaN";
  return `${name}{${pairs}} ${text}`;
}

function histogramLines(name: string, labels: Record<string, string>, h: Histogram): string[] {
  const lines = h.bounds.map((bound, i) => sampleLine(`${name}_bucket`, { ...labels, le: String(bound) }, h.counts[i]));
  lines.push(sampleLine(`${name}_bucket`, { ...labels, le: "+Inf" }, h.count));
  lines.push(sampleLine(`${name}_sum`, labels, h.sum));
  lines.push(sampleLine(`${name}_count`, labels, h.count));
  return lines;
}

/** The families of a snapshot, every sample labelled with the filter's name. */
function families(s: Stats): Family[] {
  const filter = { filter: s.filter };
  const one = (value: number): Family["samples"] => [[filter, value]];
  const byStage = <K extends string>(
    table: Stats["verdicts"] | Stats["failures"],
    label: K,
  ): Family["samples"] =>
    CALLBACK_NAMES.flatMap((stage) =>
      Object.entries(table[stage] ?? {}).map(([key, value]) =>
        [{ ...filter, stage, [label]: key }, value as number] as const
      )
    );
  return [
    {
      name: "milter_connections_open",
      type: "gauge",
      help: "MTA connections the filter serves now.",
      samples: one(s.connections.open),
    },
    {
      name: "milter_connections_total",
      type: "counter",
      help: "MTA connections opened, refused ones included.",
      samples: one(s.connections.total),
    },
    {
      name: "milter_connections_refused_total",
      type: "counter",
      help: "Connections refused because the filter was stopping.",
      samples: one(s.connections.refused),
    },
    {
      name: "milter_messages_total",
      type: "counter",
      help: "Messages that reached end of message.",
      samples: one(s.messages.total),
    },
    {
      name: "milter_messages_aborted_total",
      type: "counter",
      help: "Messages the MTA aborted.",
      samples: one(s.messages.aborted),
    },
    {
      name: "milter_verdicts_total",
      type: "counter",
      help: "Answers of the filter's callbacks, by stage and verdict.",
      samples: byStage(s.verdicts, "verdict"),
    },
    {
      name: "milter_failures_total",
      type: "counter",
      help: "Callbacks the binding answered 451 4.3.0 for (stale: a late use of a Ctx refused), by stage and kind.",
      samples: byStage(s.failures, "kind"),
    },
    {
      name: "milter_internal_failures_total",
      type: "counter",
      help: "Failures of the binding itself, answered Tempfail.",
      samples: one(s.internalFailures),
    },
    {
      name: "milter_callbacks_pending",
      type: "gauge",
      help: "Callbacks whose Promise is pending.",
      samples: one(s.callbacks.pending),
    },
    {
      name: "milter_pipeline_bytes",
      type: "gauge",
      help: "Bytes of pipelined calls queued, all connections together.",
      samples: one(s.pipeline.bytes),
    },
    {
      name: "milter_pipeline_waits_total",
      type: "counter",
      help: "Times a connection's pipeline was full and libmilter waited for room.",
      samples: one(s.pipeline.waits),
    },
    {
      name: "milter_calls_total",
      type: "counter",
      help: "Calls into JS: relayed (libmilter's thread waited: a round trip) or queued.",
      samples: [[{ ...filter, mode: "relayed" }, s.calls.relayed], [{ ...filter, mode: "queued" }, s.calls.queued]],
    },
    {
      name: "milter_bell_rings_total",
      type: "counter",
      help: "Times the shim woke the JS thread for calls.",
      samples: one(s.calls.rings),
    },
    {
      name: "milter_reloads_total",
      type: "counter",
      help: "Reloads on SIGHUP, by result (failed: the old filter stayed).",
      samples: [[{ ...filter, result: "ok" }, s.reloads.ok], [{ ...filter, result: "failed" }, s.reloads.failed]],
    },
  ];
}

/**
 * The binding's figures ({@linkcode stats}) in the Prometheus text
 * exposition format (version 0.0.4): counters `milter_…_total`, the callback
 * durations as the histogram `milter_callback_duration_seconds` by `stage`,
 * every sample labelled `filter` with the filter's name. What
 * `main({ metrics })` serves on `GET /metrics`; a program with its own
 * endpoint (or `prom-client`'s registry) can serve this text as it is. This
 * function is an extension: the OCaml module has no equivalent.
 */
export function metrics(): string {
  const s = stats();
  const lines: string[] = [];
  for (const f of families(s)) {
    lines.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`);
    for (const [labels, value] of f.samples) lines.push(sampleLine(f.name, labels, value));
  }
  const name = "milter_callback_duration_seconds";
  lines.push(
    `# HELP ${name} Time from a callback's call to its answer (its Promise settling), by stage.`,
    `# TYPE ${name} histogram`,
  );
  for (const stage of CALLBACK_NAMES) {
    const h = s.callbacks.duration[stage];
    if (h !== undefined) lines.push(...histogramLines(name, { filter: s.filter, stage }, h));
  }
  return lines.join("\n") + "\n";
}

/** The endpoint of `main({ metrics })`, until closed. */
export interface MetricsServer {
  /** Stops serving; resolves when the socket is closed (and a unix socket's file removed). */
  close(): Promise<void>;
}

/** The content type of the text exposition format. */
const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/**
 * Serves {@linkcode metrics} on `GET /metrics` (and `HEAD`) at `spec`, in
 * {@linkcode setconn}'s syntax (`inet:9464@127.0.0.1`, `inet6:…`,
 * `unix:/path`); anything else gets 404 or 405.
 *
 * @throws {MilterError} (as a rejection, naming `main`) for a malformed spec, or when the socket cannot be opened.
 */
export function serveMetrics(spec: string): Promise<MetricsServer> {
  const socket = typeof spec === "string" && spec !== "" ? parseSocketSpec(spec) : "type";
  if (typeof socket === "string") {
    fail("main", `metrics must be a socket spec such as "inet:9464@127.0.0.1", got ${describe(spec)}`);
  }
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "").split("?")[0];
    if (path !== "/metrics") {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found: only /metrics is served\n");
    } else if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("method not allowed\n");
    } else {
      let body: string;
      try {
        body = metrics();
      } catch (error) {
        response.writeHead(500, { "content-type": "text/plain" }).end(`milter: metrics failed: ${describe(error)}\n`);
        return;
      }
      response.writeHead(200, { "content-type": CONTENT_TYPE });
      response.end(request.method === "HEAD" ? undefined : body);
    }
  });
  server.keepAliveTimeout = 5_000;
  return new Promise<MetricsServer>((resolve, reject) => {
    server.once("error", (error) => {
      const why = error instanceof Error ? error.message : describe(error);
      reject(milterError("main", `cannot serve metrics on ${spec}: ${why}`, { cause: error }));
    });
    const listening = (): void => {
      server.removeAllListeners("error");
      server.on("error", () => {}); // a client's error, after listening: nothing to do
      server.unref?.();
      resolve({
        close: () =>
          new Promise<void>((done) => {
            server.close(() => {
              if (socket.kind === "unix") {
                try {
                  unlinkSync(socket.path);
                } catch {
                  // already gone
                }
              }
              done();
            });
            server.closeAllConnections?.();
          }),
      });
    };
    if (socket.kind === "unix") server.listen(socket.path, listening);
    else server.listen(socket.port, socket.host ?? (socket.kind === "inet" ? "0.0.0.0" : "::"), listening);
  });
}
