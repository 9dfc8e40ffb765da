/**
 * The recording proxy of `milter-test proxy`: listens where the MTA
 * connects, forwards every byte both ways unchanged and at once, and writes
 * one {@linkcode Recording} per milter connection when it ends.
 *
 * @module
 */

import { createServer, type Server, Socket } from "node:net";
import { mkdirSync, unlinkSync } from "node:fs";
import process from "node:process";
import { join } from "node:path";
import { connectTarget, parseSocketSpec } from "../convert.ts";
import { rename, writeFile } from "node:fs/promises";
import { type Frame, FrameReader, MilterClientError } from "./protocol.ts";
import { recordFrame, type Recording, RECORDING_FORMAT, RECORDING_VERSION, recordingText } from "./recording.ts";

/** Options of {@linkcode startProxy}. */
export interface ProxyOptions {
  /** Where the MTA connects (`setconn`'s syntax: `unix:/path`, `inet:port@host`). */
  readonly listen: string;
  /** The filter's socket, the same syntax. */
  readonly to: string;
  /** The directory recordings are written to (created if missing). */
  readonly record: string;
  /**
   * The most payload bytes one recording keeps (default 64 MiB): past it the
   * connection is still forwarded, but no more frames are recorded, the
   * recording ends `limit`, and `onNote` says so.
   */
  readonly maxBytes?: number;
  /** Told the path of each recording written. */
  readonly onRecording?: (path: string) => void;
  /** Told anything worth a line: a recording's limit hit, a filter that cannot be reached, a file not written. */
  readonly onNote?: (line: string) => void;
}

/** A running proxy. */
export interface Proxy {
  /** Stops listening and cuts the connections under way (each recorded as it stands). Resolves when closed. */
  close(): Promise<void>;
}

/** Where a socket spec listens or connects, checked. */
function target(spec: string, what: string): { path: string } | { port: number; host: string } {
  const parsed = parseSocketSpec(spec);
  if (typeof parsed === "string") {
    throw new MilterClientError("usage", `${what}: ${JSON.stringify(spec)} is not a socket spec`);
  }
  return connectTarget(parsed);
}

let sequence = 0;

/**
 * Starts the proxy.
 *
 * @throws {MilterClientError} (as a rejection) for a bad spec, or when it cannot listen.
 */
export function startProxy(options: ProxyOptions): Promise<Proxy> {
  const listen = target(options.listen, "--listen");
  const to = target(options.to, "--to");
  mkdirSync(options.record, { recursive: true });
  const maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
  const open = new Set<Socket>();
  const server: Server = createServer((mta) => {
    open.add(mta);
    mta.once("close", () => open.delete(mta));
    relay(mta, to, options, maxBytes);
  });
  return new Promise((resolve, reject) => {
    server.once(
      "error",
      (error) =>
        reject(
          new MilterClientError("connect", `cannot listen on ${options.listen}: ${error.message}`, { cause: error }),
        ),
    );
    const ready = (): void =>
      resolve({
        close: () =>
          new Promise<void>((done) => {
            for (const mta of open) mta.destroy(); // its filter side follows
            server.close(() => {
              if ("path" in listen) {
                try {
                  unlinkSync(listen.path);
                } catch {
                  // gone
                }
              }
              done();
            });
          }),
      });
    if ("path" in listen) server.listen(listen.path, ready);
    else server.listen(listen.port, listen.host, ready);
  });
}

/** Forwards one MTA connection to the filter, recording it. */
function relay(
  mta: Socket,
  to: { path: string } | { port: number; host: string },
  options: ProxyOptions,
  maxBytes: number,
): void {
  const started = new Date();
  const t0 = performance.now();
  // Kept raw while the connection runs; summarized and written once it has ended, off the forwarding path.
  const frames: { from: "mta" | "filter"; frame: Frame; t: number }[] = [];
  const readers = { mta: new FrameReader(), filter: new FrameReader() };
  let recorded = 0;
  let end: "quit" | "mta" | "filter" | "limit" | "error" | null = null;
  let limited = false;
  const filter = "path" in to ? new Socket().connect(to.path) : new Socket().connect(to.port, to.host);
  mta.setNoDelay?.(true);
  const note = (from: "mta" | "filter", chunk: Uint8Array): void => {
    if (limited) return;
    try {
      for (const frame of readers[from].push(chunk)) {
        recorded += frame.data.length + 5;
        if (recorded > maxBytes) {
          limited = true;
          options.onNote?.(`milter-test proxy: a connection passed ${maxBytes} bytes; its recording stops there`);
          return;
        }
        frames.push({ from, frame, t: performance.now() - t0 });
        if (from === "mta" && frame.code === "Q") end ??= "quit";
      }
    } catch (error) {
      limited = true; // not the milter protocol: forwarded on, not recorded further
      options.onNote?.(
        `milter-test proxy: ${from === "mta" ? "the MTA" : "the filter"} sent ${(error as Error).message}`,
      );
    }
  };
  mta.on("data", (chunk: Uint8Array) => {
    filter.write(chunk);
    note("mta", chunk);
  });
  filter.on("data", (chunk: Uint8Array) => {
    mta.write(chunk);
    note("filter", chunk);
  });
  filter.once("connect", () => filter.setNoDelay?.(true));
  // One side's end is passed on to the other, once its data is through; the recording is written once both are closed.
  mta.on("end", () => {
    end ??= "mta";
    filter.end();
  });
  filter.on("end", () => {
    end ??= "filter";
    mta.end();
  });
  mta.once("close", () => filter.destroy());
  const failed = (side: string) => (error: Error): void => {
    end ??= "error";
    options.onNote?.(`milter-test proxy: ${side}: ${error.message}`);
    mta.destroy();
    filter.destroy();
  };
  mta.on("error", failed("the MTA's connection"));
  filter.on("error", failed(`the filter at ${options.to}`));
  let open = 2;
  const closed = (): void => {
    if (--open > 0) return;
    const name = `${started.toISOString().replace(/[:.]/g, "-")}-${process.pid}-${++sequence}.json`;
    const path = join(options.record, name);
    const recording: Recording = {
      format: RECORDING_FORMAT,
      version: RECORDING_VERSION,
      started: started.toISOString(),
      end: limited ? "limit" : end ?? "mta",
      frames: frames.map(({ from, frame, t }) => recordFrame(from, frame, t)),
    };
    // Written aside, then renamed: a reader of DIR sees whole recordings only.
    writeFile(`${path}.part`, recordingText(recording)).then(() => rename(`${path}.part`, path)).then(
      () => options.onRecording?.(path),
      (error: Error) => options.onNote?.(`milter-test proxy: cannot write ${path}: ${error.message}`),
    );
  };
  mta.once("close", closed);
  filter.once("close", closed);
}
