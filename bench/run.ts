/**
 * The throughput benchmark: one filter (every callback defined and answering
 * Continue, one header added at end of message) written in C against
 * libmilter, with pymilter, and with this project under Node, Deno and Bun,
 * driven by a C load generator that speaks the MTA side. All contenders run
 * interleaved, cell by cell, in one run. A C responder without libmilter
 * ("null responder") shows what the load generator itself can drive; over
 * TCP, the C filter also runs with TCP_NODELAY set as this project sets it
 * ("C, TCP_NODELAY", the ÷ C baseline there), beside stock C with its stall.
 * "C, one callback thread" hands every callback to a single thread and waits,
 * as koffi does for the JS thread: the cost of that design, without JS.
 *
 *   npm run bench                      # the whole matrix (about 7 minutes)
 *   npm run bench -- --quick           # unix, 1 KiB, concurrency 8 and 64 (about 2 minutes)
 *   npm run bench -- --seconds 3 --rounds 3 --json out.json
 *
 * Needs gcc, libmilter-dev and python3-milter (Debian:
 * `apt-get install -y gcc libc6-dev libmilter-dev python3-milter`).
 */

import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { freePort, waitListening } from "../test/helpers/filter.ts";
import { command, ROOT, type Runtime, RUNTIMES, runtimeVersion } from "../test/helpers/runtimes.ts";

const { values: opts } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    seconds: { type: "string", default: "2" },
    warmup: { type: "string", default: "0.5" },
    rounds: { type: "string", default: "1" },
    "target-rounds": { type: "string", default: "3" },
    contenders: { type: "string" },
    json: { type: "string" },
  },
});

type Socket = "unix" | "inet";
type Contender = "null responder" | "C" | "C, TCP_NODELAY" | "C, one callback thread" | "pymilter" | Runtime;
interface Cell {
  socket: Socket;
  concurrency: number;
  body: number;
}
interface Sample {
  rate: number;
  p50: number;
  p99: number;
  rssMiB: number;
  cpuCores: number;
  loadgenCores: number;
  errors: number;
}

const ALL: Contender[] = [
  "null responder",
  "C",
  "C, TCP_NODELAY",
  "C, one callback thread",
  "pymilter",
  "node",
  "deno",
  "bun",
];
/** Contenders that only differ from another over TCP. */
const TCP_ONLY: ReadonlySet<Contender> = new Set(["C, TCP_NODELAY"]);
const contenders = opts.contenders ? opts.contenders.split(",") as Contender[] : ALL;
const SECONDS = Number(opts.seconds), WARMUP = Number(opts.warmup);
const SOCKETS: Socket[] = opts.quick ? ["unix"] : ["unix", "inet"];
const CONCURRENCY = opts.quick ? [8, 64] : [1, 8, 64, 512];
const BODIES = opts.quick ? [1024] : [1024, 100 * 1024];
/** The cells of the issue's targets, repeated `--target-rounds` times. */
const isTarget = (c: Cell): boolean => c.socket === "unix" && c.body === 1024 && [8, 64].includes(c.concurrency);

const build = mkdtempSync(join(tmpdir(), "milter-bench-"));
process.on("exit", () => rmSync(build, { recursive: true, force: true }));

function compile(): void {
  const cc = (out: string, src: string, ...libs: string[]): void => {
    try {
      execFileSync("gcc", ["-O2", "-o", join(build, out), join(ROOT, "bench", src), "-lpthread", ...libs], {
        stdio: ["ignore", "ignore", "pipe"],
      });
    } catch (error) {
      throw new Error(
        `cannot build bench/${src}: ${(error as { stderr?: Buffer }).stderr ?? error}\n` +
          "install: apt-get install -y gcc libc6-dev libmilter-dev",
      );
    }
  };
  cc("loadgen", "load/loadgen.c");
  cc("nullmilter", "load/nullmilter.c");
  cc("filter-c", "filters/filter.c", "-lmilter");
  cc("filter-handoff", "filters/filter-handoff.c", "-lmilter");
  try {
    execFileSync("/usr/bin/python3", ["-c", "import Milter"], { stdio: "ignore" });
  } catch {
    throw new Error("pymilter is missing: apt-get install -y python3-milter");
  }
}

function filterCommand(who: Contender, spec: string): [string, string[]] {
  switch (who) {
    case "null responder":
      return [join(build, "nullmilter"), [spec]];
    case "C":
      return [join(build, "filter-c"), [spec]];
    case "C, TCP_NODELAY":
      return [join(build, "filter-c"), [spec, "nodelay"]];
    case "C, one callback thread":
      return [join(build, "filter-handoff"), [spec]];
    case "pymilter":
      return ["/usr/bin/python3", [join(ROOT, "bench/filters/filter.py"), spec]];
    default: {
      const [cmd, args] = command(who, join(ROOT, "bench/filters/filter.ts"));
      return [cmd, [...args, spec]];
    }
  }
}

/** CPU seconds used so far by `pid` (all threads). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

function peakRssMiB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmHWM:"));
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024;
}

async function measure(who: Contender, cell: Cell): Promise<Sample> {
  const dir = mkdtempSync(join(build, "run-"));
  const spec = cell.socket === "unix" ? `unix:${join(dir, "milter.sock")}` : `inet:${await freePort()}@127.0.0.1`;
  const [cmd, args] = filterCommand(who, spec);
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (t: string) => (stderr += t));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    await waitListening(spec, () => child.exitCode !== null || child.signalCode !== null ? stderr : null);
    const cpu0 = cpuSeconds(child.pid!);
    const started = process.hrtime.bigint();
    const out = execFileSync(
      join(build, "loadgen"),
      [spec, String(cell.concurrency), String(cell.body), String(WARMUP), String(SECONDS)],
      { encoding: "utf8" },
    );
    const wall = Number(process.hrtime.bigint() - started) / 1e9;
    const result = JSON.parse(out);
    if (result.errors > 0 || result.messages === 0) {
      throw new Error(`${who} ${JSON.stringify(cell)}: ${result.errors} errors (${result.firstError})\n${stderr}`);
    }
    return {
      rate: result.rate,
      p50: result.p50,
      p99: result.p99,
      rssMiB: peakRssMiB(child.pid!),
      cpuCores: (cpuSeconds(child.pid!) - cpu0) / wall,
      loadgenCores: result.cpuMs / 1000 / result.seconds,
      errors: result.errors,
    };
  } finally {
    child.kill("SIGKILL");
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]): number => xs.toSorted((a, b) => a - b)[Math.floor(xs.length / 2)];
const key = (c: Cell): string => `${c.socket} c=${c.concurrency} ${c.body / 1024} KiB`;

compile();
const versions: Record<string, string> = {};
for (const who of contenders) {
  if (who === "node" || who === "deno" || who === "bun") versions[who] = runtimeVersion(who);
}
const cells: Cell[] = SOCKETS.flatMap((socket) =>
  BODIES.flatMap((body) => CONCURRENCY.map((concurrency) => ({ socket, concurrency, body })))
);
const samples = new Map<string, Map<Contender, Sample[]>>();
const started = Date.now();
for (const cell of cells) {
  const rounds = isTarget(cell) ? Math.max(Number(opts.rounds), Number(opts["target-rounds"])) : Number(opts.rounds);
  const here = contenders.filter((who) => cell.socket === "inet" || !TCP_ONLY.has(who));
  const bag = new Map<Contender, Sample[]>(here.map((c) => [c, []]));
  samples.set(key(cell), bag);
  for (let r = 0; r < rounds; r++) {
    for (const who of here) bag.get(who)!.push(await measure(who, cell));
  }
  const line = here.map((who) => `${who} ${median(bag.get(who)!.map((s) => s.rate)).toFixed(0)}/s`).join(", ");
  console.error(`[${((Date.now() - started) / 1000).toFixed(0)} s] ${key(cell)}: ${line}`);
}

/** The median sample of a contender in a cell (by rate), with median latencies. */
function summary(list: Sample[]): Sample {
  const pick = (f: (s: Sample) => number): number => median(list.map(f));
  return {
    rate: pick((s) => s.rate),
    p50: pick((s) => s.p50),
    p99: pick((s) => s.p99),
    rssMiB: Math.max(...list.map((s) => s.rssMiB)),
    cpuCores: pick((s) => s.cpuCores),
    loadgenCores: pick((s) => s.loadgenCores),
    errors: list.reduce((n, s) => n + s.errors, 0),
  };
}

const lines: string[] = [];
lines.push(
  `${SECONDS} s measured after ${WARMUP} s of warm-up per run; the target cells (unix, 1 KiB, c=8 and 64) are the ` +
    `median of ${Math.max(Number(opts.rounds), Number(opts["target-rounds"]))} interleaved rounds, the others of ` +
    `${opts.rounds}. Runtimes: ${
      Object.entries(versions).map(([k, v]) => v.startsWith(k) ? v : `${k} ${v}`).join(", ")
    }. ` +
    "÷ C is against C with TCP_NODELAY over inet (stock C and pymilter stall ~40 ms per message there).",
  "",
  "| cell | contender | messages/s | p50 ms | p99 ms | peak RSS MiB | filter CPU (cores) | loadgen CPU (cores) | ÷ C | ÷ pymilter |",
  "| ---- | --------- | ---------: | -----: | -----: | -----------: | -----------------: | ------------------: | --: | ---------: |",
);
const json: Record<string, Record<string, Sample>> = {};
for (const [cell, bag] of samples) {
  json[cell] = {};
  // Over TCP the C baseline is the one without the Nagle stall, as this project is.
  const baseline = bag.get("C, TCP_NODELAY") ?? bag.get("C");
  const c = baseline ? summary(baseline) : null;
  const py = bag.has("pymilter") ? summary(bag.get("pymilter")!) : null;
  for (const [who, list] of bag) {
    const s = summary(list);
    json[cell][who] = s;
    const ratio = (base: Sample | null): string =>
      base && RUNTIMES.includes(who as Runtime) ? `${(s.rate / base.rate).toFixed(2)}×` : "";
    lines.push(
      `| ${cell} | ${who} | ${s.rate.toFixed(0)} | ${s.p50.toFixed(2)} | ${s.p99.toFixed(2)} | ${
        s.rssMiB.toFixed(1)
      } | ` +
        `${s.cpuCores.toFixed(2)} | ${s.loadgenCores.toFixed(2)} | ${ratio(c)} | ${ratio(py)} |`,
    );
  }
}
console.log(lines.join("\n"));
console.error(`done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
if (opts.json) writeFileSync(opts.json, JSON.stringify({ versions, seconds: SECONDS, cells: json }, null, 2));
