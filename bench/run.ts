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
 * `--async` runs the matrix of async callbacks instead (unix, 1 KiB): at
 * concurrency 8 and 64, the filter with every callback async ("node async",
 * each callback awaits once, eom adds its header after the await) beside the
 * synchronous one; and at concurrency 64 the I/O-bound cell, where envrcpt
 * waits 50 ms: C and pymilter sleep on libmilter's thread, this project
 * awaits a timer. `--before <git rev>` adds "node @<rev>", the synchronous
 * filter of an earlier commit (e.g. the last one before the shim's callback
 * wrappers), run under Node from a copy of that commit's tree. Under Node,
 * tsx runs the TypeScript with esbuild's keepNames, which names every closure
 * as it is created (an `Object.defineProperty` each); "node (compiled)" runs
 * the same filter compiled by tsc with the package's own build settings, as
 * the published package runs.
 *
 * `--pipeline` runs the matrix of no-reply stages instead (issue 14): unix,
 * 1 KiB body, 25 headers of 60–80 bytes (a relayed message's Received,
 * DKIM-Signature, List-*, …), concurrency 8 and 64. The load generator offers
 * every step, as Postfix does; each filter negotiates NR_HDR and NR_BODY and
 * answers neither (C returns SMFIS_NOREPLY, pymilter uses `@Milter.noreply`,
 * this project answers No_reply), and each run fails unless the load
 * generator saw the 26 commands per message go unanswered. "C, one callback
 * thread, NR answered at once" is the bound of pipelining: header and body
 * are queued for the one callback thread and answered at once, every other
 * callback waits for it (÷ bound). "node" is this project as it runs by
 * default, "node (no pipelining)" the same with `PIPELINE_BYTES=0`
 * (`main({ pipelineBytes: 0 })`); `PIPELINE_BYTES` set for the benchmark
 * passes on to the other runs of this project.
 *
 * `--readme` runs the README's quick-start filter instead (issue 20): envrcpt
 * rejects a recipient containing "spam" with 550 5.7.1, eom adds one header
 * (`X-Stamped: yes, queue id <i>`), no other callback, so the MTA skips every
 * other stage (checked per run from the negotiated steps). It is written the
 * same way for C (`filter.c readme`), pymilter (`filter.py readme`) and this
 * project (`filter.ts readme`, the README's code); "C, hand-off bound"
 * (`filter-handoff.c readme`) registers only envrcpt and eom and hands both
 * to one callback thread and waits, with no negotiate, abort or close to
 * relay: the bound of any design that runs callbacks on one JS thread
 * (÷ bound). Unix socket, 1 KiB body, concurrency 8 and 64, two ways to
 * connect: "a connection per message" (a milter session per message, as for
 * a one-message SMTP session) and "one connection for all" (the load
 * generator's `--reuse`: each of its threads keeps one session, and sends
 * SMFIC_ABORT between messages as Postfix does). Every message's recipient
 * must be accepted and its header be the expected one; each load generator
 * thread's first message also has a "spam" recipient that must get
 * 550 5.7.1. Beside messages/s, "CPU µs/msg" is the filter process's CPU
 * time (all its threads) per message: filter CPU (cores) × 10⁶ ÷ messages/s.
 *
 *   npm run bench                        # the whole matrix (about 7 minutes)
 *   npm run bench -- --quick             # unix, 1 KiB, concurrency 8 and 64 (about 2 minutes)
 *   npm run bench -- --async             # async callbacks, every runtime (about 4 minutes)
 *   npm run bench -- --async --quick     # the same with C and Node only (about 1.5 minutes)
 *   npm run bench -- --pipeline          # no-reply stages, every contender, 3 rounds (about 2 minutes)
 *   npm run bench -- --pipeline --quick  # C, node and node (no pipelining), 1 round (about 20 s)
 *   npm run bench -- --readme            # the quick-start filter, every contender, 3 rounds (about 3.5 minutes)
 *   npm run bench -- --readme --quick    # C, the bound, pymilter and node, 1 round (about 50 s)
 *   npm run bench -- --seconds 3 --rounds 3 --json out.json
 *
 * Needs gcc, libmilter-dev and python3-milter (Debian:
 * `apt-get install -y gcc libc6-dev libmilter-dev python3-milter`).
 */

import { execFileSync, spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { freePort, waitListening } from "../test/helpers/filter.ts";
import { command, ROOT, type Runtime, runtimeVersion } from "../test/helpers/runtimes.ts";

const { values: opts } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    seconds: { type: "string", default: "2" },
    warmup: { type: "string", default: "0.5" },
    rounds: { type: "string", default: "1" },
    "target-rounds": { type: "string" },
    contenders: { type: "string" },
    async: { type: "boolean", default: false },
    pipeline: { type: "boolean", default: false },
    readme: { type: "boolean", default: false },
    before: { type: "string" },
    json: { type: "string" },
  },
});

type Socket = "unix" | "inet";
type Contender =
  | "null responder"
  | "C"
  | "C, TCP_NODELAY"
  | "C, one callback thread"
  | "C, one callback thread, NR answered at once"
  | "C, hand-off bound"
  | "pymilter"
  | Runtime
  | `${Runtime} async`
  | "node (compiled)"
  | "node async (compiled)"
  | "node (no pipelining)"
  | `node @${string}`;
interface Cell {
  socket: Socket;
  concurrency: number;
  body: number;
  /** Milliseconds envrcpt waits (I/O stand-in): C and pymilter sleep, this project awaits a timer. */
  rcptWait: number;
  /** How many of a real message's headers the load generator sends (`--headers`); `null`: its five short ones. */
  headers: number | null;
  /** Whether every filter negotiates NR_HDR and NR_BODY and answers neither (`--pipeline`). */
  noReply: boolean;
  /** Whether every filter is the README's quick-start filter (`--readme`). */
  readme: boolean;
  /** Whether each load generator thread keeps one milter session for all its messages (`--reuse`). */
  reuse: boolean;
}
interface Sample {
  rate: number;
  p50: number;
  p99: number;
  rssMiB: number;
  cpuCores: number;
  /** The filter's CPU time per message, µs: cpuCores × 10⁶ ÷ rate. */
  cpuUs: number;
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
const BEFORE: Contender | null = opts.before ? `node @${opts.before}` : null;
/** The bound of pipelined no-reply stages: header and body answered at once, queued for one callback thread. */
const BOUND: Contender = "C, one callback thread, NR answered at once";
const PIPELINE: Contender[] = opts.quick
  ? ["C", "node", "node (no pipelining)"]
  : ["C", BOUND, "pymilter", "node", "node (no pipelining)", "deno", "bun"];
/** The bound of the quick-start filter: envrcpt and eom handed to one callback thread, nothing else registered. */
const README_BOUND: Contender = "C, hand-off bound";
const README: Contender[] = opts.quick
  ? ["C", README_BOUND, "pymilter", "node"]
  : ["C", README_BOUND, "pymilter", "node", "deno", "bun"];
/** The header the quick-start filter adds; the load generator sends the queue id `i` as BENCH01. */
const README_HEADER = "X-Stamped: yes, queue id BENCH01";
/** The stages the quick-start filter skips: NOCONNECT NOHELO NOMAIL NOBODY NOHDRS NOEOH NODATA. */
const README_SKIPS = 0x277;
const ASYNC: Contender[] = opts.quick ? ["C", "node", "node async"] : [
  "C",
  "pymilter",
  "node",
  "node async",
  "node (compiled)",
  "node async (compiled)",
  "deno",
  "deno async",
  "bun",
  "bun async",
];
/** Contenders that only differ from another over TCP. */
const TCP_ONLY: ReadonlySet<Contender> = new Set(["C, TCP_NODELAY"]);
/** Contenders that exist only in the no-reply cells (`--pipeline`). */
const NO_REPLY_ONLY: ReadonlySet<Contender> = new Set([BOUND, "node (no pipelining)"]);
/** Contenders that exist only in the quick-start cells (`--readme`). */
const README_ONLY: ReadonlySet<Contender> = new Set([README_BOUND]);
/** Contenders with a quick-start variant (`readme`). */
const hasReadme = (who: Contender): boolean =>
  ["C", "pymilter", README_BOUND].includes(who) || who === BEFORE ||
  (ourFilter(who) !== null && !ourFilter(who)!.async);
/** Contenders whose filter cannot negotiate no reply, left out of the no-reply cells. */
const replies = (who: Contender): boolean =>
  ["null responder", "C, TCP_NODELAY", "C, one callback thread"].includes(who) || !!ourFilter(who)?.async;
/** Contenders whose filter can wait in envrcpt (`rcpt-wait=<ms>`). */
const waits = (who: Contender): boolean => who === "C" || who === "pymilter" || ourFilter(who) !== null;
/**
 * This project's filter: on which runtime, whether async, whether compiled by
 * tsc, whether pipelining is left on; `null` for the others.
 */
function ourFilter(
  who: Contender,
): { runtime: Runtime; async: boolean; compiled: boolean; pipelining: boolean; log: boolean } | null {
  const match = /^(node|deno|bun)( async)?( \(compiled\))?( \(no pipelining\))?( \(log\))?$/.exec(who);
  return match
    ? {
      runtime: match[1] as Runtime,
      async: !!match[2],
      compiled: !!match[3],
      pipelining: !match[4],
      log: !!match[5],
    }
    : null;
}
/** The C and Python contenders; this project's are those {@linkcode ourFilter} knows. */
const OTHERS: readonly Contender[] = [
  "null responder",
  "C",
  "C, TCP_NODELAY",
  "C, one callback thread",
  BOUND,
  README_BOUND,
  "pymilter",
];
/** `--contenders a,b,…`: split at commas not followed by a space ("C, TCP_NODELAY" is one name). */
function named(list: string): Contender[] {
  const names = list.split(/,(?! )/) as Contender[];
  const unknown = names.filter((who) => !OTHERS.includes(who) && ourFilter(who) === null);
  if (unknown.length) throw new Error(`unknown contenders: ${unknown.map((who) => JSON.stringify(who)).join(", ")}`);
  return names;
}
const contenders: Contender[] = [
  ...(opts.contenders
    ? named(opts.contenders)
    : opts.readme
    ? README
    : opts.pipeline
    ? PIPELINE
    : opts.async
    ? ASYNC
    : ALL),
  ...(BEFORE ? [BEFORE] : []),
];
const SECONDS = Number(opts.seconds), WARMUP = Number(opts.warmup);
/** Rounds of the target cells: 3, but 1 for `--pipeline --quick` and `--readme --quick`. */
const TARGET_ROUNDS = Math.max(
  Number(opts.rounds),
  Number(opts["target-rounds"] ?? ((opts.pipeline || opts.readme) && opts.quick ? 1 : 3)),
);
const narrow = opts.quick || opts.async || opts.pipeline || opts.readme;
const SOCKETS: Socket[] = narrow ? ["unix"] : ["unix", "inet"];
const CONCURRENCY = narrow ? [8, 64] : [1, 8, 64, 512];
const BODIES = narrow ? [1024] : [1024, 100 * 1024];
/** The I/O-bound cell of `--async`: envrcpt waits this long, at concurrency 64. */
const RCPT_WAIT_MS = 50;
/** Headers per message in the `--pipeline` cells. */
const PIPELINE_HEADERS = 25;
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
  if (!contenders.includes("pymilter")) return;
  try {
    execFileSync("/usr/bin/python3", ["-c", "import Milter"], { stdio: "ignore" });
  } catch {
    throw new Error("pymilter is missing: apt-get install -y python3-milter");
  }
}

/**
 * A copy of the tree at `--before <rev>` (`git archive`, no checkout), with
 * this tree's node_modules; its own prebuilt shim comes with it. With
 * `--readme`, this tree's TypeScript filters replace that tree's, so that the
 * same quick-start filter runs against the earlier binding.
 */
function beforeTree(): string {
  const dir = join(build, "before");
  mkdirSync(dir);
  execFileSync("sh", ["-c", 'git -C "$1" archive --format=tar "$2" | tar -x -C "$3"', "sh", ROOT, opts.before!, dir]);
  symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
  if (opts.readme) {
    for (const file of ["filter.ts", "bench-filter.ts"]) {
      cpSync(join(ROOT, "bench/filters", file), join(dir, "bench/filters", file));
    }
  }
  return dir;
}

/**
 * The benchmark filter and the package compiled by tsc with the package's
 * build settings (tsconfig.build.json) into `<build>/js`, with the prebuilt
 * shims beside `ffi/shim.js` as in the published package.
 */
function compiledTree(): string {
  const out = join(build, "js");
  const config = join(build, "tsconfig.json");
  writeFileSync(
    config,
    JSON.stringify({
      extends: join(ROOT, "tsconfig.build.json"),
      compilerOptions: { outDir: out, rootDir: ROOT, declaration: false },
      include: [join(ROOT, "bench/filters/filter.ts")],
      exclude: [],
    }),
  );
  if (!existsSync(join(build, "node_modules"))) symlinkSync(join(ROOT, "node_modules"), join(build, "node_modules"));
  execFileSync(process.execPath, [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", config], { stdio: "inherit" });
  cpSync(join(ROOT, "ffi/shim/prebuilt"), join(out, "ffi/shim/prebuilt"), { recursive: true });
  return out;
}

/** The filter's command line, and what its environment adds. */
function filterCommand(who: Contender, spec: string, cell: Cell): [string, string[], Record<string, string>] {
  const wait = cell.rcptWait > 0 ? [`rcpt-wait=${cell.rcptWait}`] : [];
  const noReply = cell.noReply ? ["noreply"] : [];
  const readme = cell.readme ? ["readme"] : [];
  switch (who) {
    case "null responder":
      return [join(build, "nullmilter"), [spec], {}];
    case "C":
      return [join(build, "filter-c"), [spec, ...wait, ...noReply, ...readme], {}];
    case "C, TCP_NODELAY":
      return [join(build, "filter-c"), [spec, "nodelay", ...wait], {}];
    case "C, one callback thread":
      return [join(build, "filter-handoff"), [spec], {}];
    case BOUND:
      return [join(build, "filter-handoff"), [spec, "noreply"], {}];
    case README_BOUND:
      return [join(build, "filter-handoff"), [spec, "readme"], {}];
    case "pymilter":
      return ["/usr/bin/python3", [join(ROOT, "bench/filters/filter.py"), spec, ...wait, ...noReply, ...readme], {}];
    default: {
      if (who === BEFORE) {
        const [cmd, args] = command("node", join(beforeDir!, "bench/filters/filter.ts"));
        return [cmd, [...args, spec, ...noReply, ...readme], {}];
      }
      const { runtime, async, compiled, pipelining, log } = ourFilter(who)!;
      const options = [spec, ...(async ? ["async"] : []), ...wait, ...noReply, ...readme];
      const env: Record<string, string> = {
        ...(pipelining ? {} : { PIPELINE_BYTES: "0" }),
        ...(log ? { MILTER_LOG: "json" } : {}),
      };
      if (compiled) return [process.execPath, [join(compiledDir!, "bench/filters/filter.js"), ...options], env];
      const [cmd, args] = command(runtime, join(ROOT, "bench/filters/filter.ts"));
      return [cmd, [...args, ...options], env];
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
  const [cmd, args, env] = filterCommand(who, spec, cell);
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (t: string) => (stderr += t));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    await waitListening(spec, () => child.exitCode !== null || child.signalCode !== null ? stderr : null);
    const cpu0 = cpuSeconds(child.pid!);
    const started = process.hrtime.bigint();
    const out = execFileSync(
      join(build, "loadgen"),
      [
        spec,
        String(cell.concurrency),
        String(cell.body),
        String(WARMUP),
        String(SECONDS),
        ...(cell.headers === null ? [] : ["--headers", String(cell.headers)]),
        ...(cell.reuse ? ["--reuse"] : []),
        ...(cell.readme ? ["--spam", "--expect-header", README_HEADER] : []),
      ],
      { encoding: "utf8" },
    );
    const wall = Number(process.hrtime.bigint() - started) / 1e9;
    const result = JSON.parse(out);
    if (result.errors > 0 || result.messages === 0) {
      throw new Error(`${who} ${JSON.stringify(cell)}: ${result.errors} errors (${result.firstError})\n${stderr}`);
    }
    // Every header and body chunk unanswered, as negotiated, or the cell measures something else.
    const unanswered = (cell.headers ?? 5) + Math.ceil(cell.body / 65535);
    if (cell.noReply && result.noReply !== unanswered) {
      throw new Error(
        `${who} ${JSON.stringify(cell)}: ${result.noReply} commands per message went unanswered, not ${unanswered} ` +
          `(negotiated steps 0x${result.steps.toString(16)}; NR_HDR and NR_BODY are 0x80080)\n${stderr}`,
      );
    }
    // The quick-start filter has two callbacks: the MTA must skip every other stage, or the cell measures more.
    // (Logging one line per message asks for connect, MAIL and RCPT too: "(log)" measures what that costs.)
    if (cell.readme && !ourFilter(who)?.log && (result.steps & README_SKIPS) !== README_SKIPS) {
      throw new Error(
        `${who} ${JSON.stringify(cell)}: negotiated steps 0x${result.steps.toString(16)} do not skip ` +
          `every stage but RCPT and end of message (0x${README_SKIPS.toString(16)})\n${stderr}`,
      );
    }
    const cpuCores = (cpuSeconds(child.pid!) - cpu0) / wall;
    return {
      rate: result.rate,
      p50: result.p50,
      p99: result.p99,
      rssMiB: peakRssMiB(child.pid!),
      cpuCores,
      cpuUs: cpuCores * 1e6 / result.rate,
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
const key = (c: Cell): string =>
  `${c.socket} c=${c.concurrency} ${c.body / 1024} KiB${c.rcptWait > 0 ? `, envrcpt waits ${c.rcptWait} ms` : ""}` +
  (c.headers === null ? "" : `, ${c.headers} headers`) + (c.noReply ? ", NR_HDR+NR_BODY" : "") +
  (c.readme ? (c.reuse ? ", one connection for all" : ", a connection per message") : "");

compile();
const beforeDir = BEFORE ? beforeTree() : null;
const compiledDir = contenders.some((who) => ourFilter(who)?.compiled) ? compiledTree() : null;
const versions: Record<string, string> = {};
for (const who of contenders) {
  const runtime = ourFilter(who)?.runtime;
  if (runtime) versions[runtime] = runtimeVersion(runtime);
}
const plain = { rcptWait: 0, headers: null, noReply: false, readme: false, reuse: false };
const cells: Cell[] = opts.readme
  ? [false, true].flatMap((reuse) =>
    CONCURRENCY.map((concurrency) => ({
      ...plain,
      socket: "unix" as const,
      concurrency,
      body: 1024,
      readme: true,
      reuse,
    }))
  )
  : opts.pipeline
  ? CONCURRENCY.map((concurrency) => ({
    ...plain,
    socket: "unix",
    concurrency,
    body: 1024,
    headers: PIPELINE_HEADERS,
    noReply: true,
  }))
  : [
    ...SOCKETS.flatMap((socket) =>
      BODIES.flatMap((body) => CONCURRENCY.map((concurrency) => ({ ...plain, socket, concurrency, body })))
    ),
    ...(opts.async ? [{ ...plain, socket: "unix" as const, concurrency: 64, body: 1024, rcptWait: RCPT_WAIT_MS }] : []),
  ];
const samples = new Map<string, Map<Contender, Sample[]>>();
const started = Date.now();
for (const cell of cells) {
  const rounds = isTarget(cell) ? TARGET_ROUNDS : Number(opts.rounds);
  const here = contenders.filter((who) =>
    (cell.socket === "inet" || !TCP_ONLY.has(who)) && (cell.rcptWait === 0 || waits(who)) &&
    (cell.noReply ? !replies(who) : !NO_REPLY_ONLY.has(who)) &&
    (cell.readme ? hasReadme(who) : !README_ONLY.has(who))
  );
  const bag = new Map<Contender, Sample[]>(here.map((c) => [c, []]));
  samples.set(key(cell), bag);
  for (let r = 0; r < rounds; r++) {
    for (const who of here) bag.get(who)!.push(await measure(who, cell));
  }
  const rates = (who: Contender): number[] => bag.get(who)!.map((s) => s.rate);
  const line = here.map((who) =>
    `${who} ${median(rates(who)).toFixed(0)}/s` +
    (rounds > 1 ? ` (${Math.min(...rates(who)).toFixed(0)}–${Math.max(...rates(who)).toFixed(0)})` : "") +
    (cell.readme ? ` ${median(bag.get(who)!.map((s) => s.cpuUs)).toFixed(0)} µs/msg` : "")
  ).join(", ");
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
    cpuUs: pick((s) => s.cpuUs),
    loadgenCores: pick((s) => s.loadgenCores),
    errors: list.reduce((n, s) => n + s.errors, 0),
  };
}

/** Whether the table has a ÷ bound column (`--pipeline`, `--readme`). */
const withBound = opts.pipeline || opts.readme;
const lines: string[] = [];
lines.push(
  `${SECONDS} s measured after ${WARMUP} s of warm-up per run; ` +
    (opts.pipeline || opts.readme
      ? `each figure is the median of ${TARGET_ROUNDS} interleaved rounds. `
      : `the target cells (unix, 1 KiB, c=8 and 64) are the median of ${TARGET_ROUNDS} interleaved rounds, ` +
        `the others of ${opts.rounds}. `) +
    `Runtimes: ${Object.entries(versions).map(([k, v]) => v.startsWith(k) ? v : `${k} ${v}`).join(", ")}.` +
    (SOCKETS.includes("inet")
      ? " ÷ C is against C with TCP_NODELAY over inet (stock C and pymilter stall ~40 ms per message there)."
      : "") +
    (opts.async ? " ÷ sync is an async contender against the synchronous filter on the same runtime." : "") +
    (opts.pipeline
      ? ` ${PIPELINE_HEADERS} headers of 60–80 bytes per message; every filter negotiates NR_HDR and NR_BODY and ` +
        `answers neither (checked per run: ${PIPELINE_HEADERS + 1} commands per message unanswered). ` +
        `÷ bound is against "${BOUND}". "node (no pipelining)" runs with PIPELINE_BYTES=0.`
      : "") +
    (opts.readme
      ? ' The README\'s quick-start filter (envrcpt rejects a recipient containing "spam" with 550 5.7.1, ' +
        "eom adds one header, no other callback; every other stage skipped, checked per run). Every message has " +
        "one recipient, which must be accepted, and must get the expected header; each load generator thread's " +
        'first message also a "spam" recipient, which must get 550 5.7.1. "a connection per message": a milter ' +
        'session per message; "one connection for all": each load generator thread keeps one session, ' +
        "SMFIC_ABORT between messages as Postfix sends it. CPU µs/msg is the filter process's CPU time (all " +
        `threads) per message, filter CPU (cores) × 10⁶ ÷ messages/s. ÷ bound is against "${README_BOUND}" ` +
        "(envrcpt and eom handed to one callback thread and waited for, nothing else registered)."
      : "") +
    (BEFORE ? ` ÷ @${opts.before} is the synchronous Node filter against the one of ${opts.before}.` : ""),
  "",
  `| cell | contender | messages/s |${opts.readme ? " CPU µs/msg |" : ""} p50 ms | p99 ms | peak RSS MiB | ` +
    "filter CPU (cores) | loadgen CPU (cores) | ÷ C | ÷ pymilter |" +
    (opts.async ? " ÷ sync |" : "") + (withBound ? " ÷ bound |" : "") + (BEFORE ? ` ÷ @${opts.before} |` : ""),
  `| ---- | --------- | ---------: |${opts.readme ? " ---------: |" : ""} -----: | -----: | -----------: | ` +
    "-----------------: | ------------------: | --: | ---------: |" +
    (opts.async ? " -----: |" : "") + (withBound ? " ------: |" : "") + (BEFORE ? " ---: |" : ""),
);
const json: Record<string, Record<string, Sample & { rates: number[] }>> = {};
for (const [cell, bag] of samples) {
  json[cell] = {};
  // Over TCP the C baseline is the one without the Nagle stall, as this project is.
  const baseline = bag.get("C, TCP_NODELAY") ?? bag.get("C");
  const c = baseline ? summary(baseline) : null;
  const py = bag.has("pymilter") ? summary(bag.get("pymilter")!) : null;
  const before = BEFORE && bag.has(BEFORE) ? summary(bag.get(BEFORE)!) : null;
  const boundOf = bag.get(BOUND) ?? bag.get(README_BOUND);
  const bound = boundOf ? summary(boundOf) : null;
  for (const [who, list] of bag) {
    const s = summary(list);
    json[cell][who] = { ...s, rates: list.map((x) => Math.round(x.rate)) };
    // The bound is compared with C and pymilter too.
    const ours = ourFilter(who) !== null || who === BEFORE || who === BOUND || who === README_BOUND;
    const ratio = (base: Sample | null, applies = ours): string =>
      base && applies ? `${(s.rate / base.rate).toFixed(2)}×` : "";
    const syncOf = who.replace(" async", "") as Contender;
    const sync = syncOf !== who && bag.has(syncOf) ? summary(bag.get(syncOf)!) : null;
    lines.push(
      `| ${cell} | ${who} | ${s.rate.toFixed(0)} |${opts.readme ? ` ${s.cpuUs.toFixed(0)} |` : ""} ` +
        `${s.p50.toFixed(2)} | ${s.p99.toFixed(2)} | ${s.rssMiB.toFixed(1)} | ` +
        `${s.cpuCores.toFixed(2)} | ${s.loadgenCores.toFixed(2)} | ${ratio(c)} | ${ratio(py)} |` +
        (opts.async ? ` ${ratio(sync)} |` : "") +
        (withBound ? ` ${ratio(bound, ours && who !== BOUND && who !== README_BOUND)} |` : "") +
        (BEFORE ? ` ${ratio(before, who === "node")} |` : ""),
    );
  }
}
console.log(lines.join("\n"));
console.error(`done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
if (opts.json) writeFileSync(opts.json, JSON.stringify({ versions, seconds: SECONDS, cells: json }, null, 2));
