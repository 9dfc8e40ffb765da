/**
 * End to end through Postfix, for issue 14: a header-heavy message (the 25
 * headers of 60–80 bytes that `load/loadgen.c --headers 25` sends, and a 1 KiB
 * body) sent with Postfix's smtp-source, in parallel SMTP sessions of one
 * message each, to a private Postfix (test/mta/postfix.ts) whose smtpd has the
 * filter as `smtpd_milters` on a unix socket and relays every message to an
 * smtp-sink. Postfix offers the no-reply steps (milter_protocol = 6), and
 * every filter negotiates NR_HDR and NR_BODY and answers neither:
 *
 * - "no milter": Postfix alone, the ceiling;
 * - "C": bench/filters/filter.c against libmilter, `noreply`;
 * - "pymilter": bench/filters/filter.py, `noreply` (`@Milter.noreply`);
 * - "node": this project's filter (bench/filters/filter.ts `noreply`) as it runs by default;
 * - "node (no pipelining)": the same with `PIPELINE_BYTES=0` (`main({ pipelineBytes: 0 })`).
 *
 * Each contender gets a fresh Postfix and smtp-sink. smtp-source runs
 * without pause (`-c` counts each message Postfix accepted, that is after the
 * end-of-message milter reply); after `--warmup` seconds the count is taken,
 * and again `--seconds` later, when smtp-source is stopped. Postfix delivers
 * to the sink meanwhile, on the same CPUs. Then the run waits for the queue
 * to empty and checks what smtp-sink got: at least every message counted,
 * each with the filter's X-Bench header, and no milter warning in Postfix's
 * log. With `--rounds N` the contenders run interleaved N times and the
 * median is shown. Not part of `npm test`; about 70 s with the
 * defaults. Take the benchmark lock first on a shared machine:
 * `flock /tmp/bench.lock npx tsx bench/postfix.ts`.
 *
 *   npx tsx bench/postfix.ts [--seconds 8] [--warmup 1] [--sessions 8] [--rounds 1]
 *     [--contenders "no milter,C,node"] [--disk] [--readme] [--postconf name=value …]
 *
 * `--readme` runs the README's quick-start filter in each contender instead
 * (`readme`: envrcpt and eom only, adding `X-Stamped: yes, queue id <i>`),
 * on the same messages.
 *
 * Postfix's queue (and the rest of the run) is under /dev/shm: Postfix then
 * fsyncs nothing, and the CPU rather than the disk sets the pace, so the
 * filters' cost shows. `--disk` keeps it in the temp dir (TMPDIR, /tmp), as
 * the test suite's Postfix runs; on a VM disk the fsyncs then set the pace and
 * the figures vary by ±20% from run to run, "no milter" included. `--postconf`
 * adds main.cf settings to every run (e.g. `--postconf in_flow_delay=0`).
 *
 * Needs root (Postfix's own user runs smtpd), Debian's postfix (smtp-source and
 * smtp-sink come with it), gcc, libmilter-dev and python3-milter.
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { freePort, waitListening } from "../test/helpers/filter.ts";
import { command, ROOT } from "../test/helpers/runtimes.ts";
import { PrivatePostfix, stopAllPostfix } from "../test/mta/postfix.ts";

const { values: opts } = parseArgs({
  options: {
    seconds: { type: "string", default: "8" },
    warmup: { type: "string", default: "1" },
    sessions: { type: "string", default: "8" },
    rounds: { type: "string", default: "1" },
    contenders: { type: "string" },
    postconf: { type: "string", multiple: true, default: [] },
    disk: { type: "boolean", default: false },
    readme: { type: "boolean", default: false },
  },
});
/** The filters' option: the README's quick-start filter (`--readme`), or the header-heavy no-reply one. */
const FILTER_OPTION = opts.readme ? "readme" : "noreply";
/** The header each filter adds to every message. */
const MARK = opts.readme ? /^X-Stamped: yes, queue id \S+\r?$/gm : /^X-Bench: yes\r?$/gm;

type Contender = "no milter" | "C" | "pymilter" | "node" | "node (no pipelining)";
const ALL: Contender[] = ["no milter", "C", "pymilter", "node", "node (no pipelining)"];
const contenders: Contender[] = opts.contenders ? opts.contenders.split(",") as Contender[] : ALL;
for (const who of contenders) if (!ALL.includes(who)) throw new Error(`unknown contender ${JSON.stringify(who)}`);
const SECONDS = Number(opts.seconds), WARMUP = Number(opts.warmup);
const SESSIONS = Number(opts.sessions), ROUNDS = Number(opts.rounds);
const FROM = "alice@example.org", TO = "bob@example.net";
/** `--postconf name=value`: more main.cf settings for every run. */
const POSTCONF: Record<string, string> = Object.fromEntries(opts.postconf.map((setting) => {
  const eq = setting.indexOf("=");
  if (eq < 1) throw new Error(`--postconf ${setting}: expected name=value`);
  return [setting.slice(0, eq).trim(), setting.slice(eq + 1).trim()];
}));

interface Sample {
  rate: number;
  /** Messages Postfix accepted in the measured window, and how long it was. */
  messages: number;
  seconds: number;
  /** CPU of the filter process over the measured batch, in cores; 0 without a filter. */
  filterCores: number;
}

// Every directory of the run, Postfix's queue among them, in memory unless --disk (PrivatePostfix uses tmpdir() too).
const TMPFS = !opts.disk && existsSync("/dev/shm");
if (TMPFS) process.env.TMPDIR = "/dev/shm";
const build = mkdtempSync(join(tmpdir(), "milter-bench-postfix-"));
chmodSync(build, 0o755); // Postfix's smtpd, as user postfix, reaches the filters' sockets in here
process.on("exit", () => rmSync(build, { recursive: true, force: true }));
// Postfix runs as a daemon of its own: stop it on ^C too (filters and sinks are children, signalled with us).
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void stopAllPostfix().finally(() => process.exit(130)));
}

/** The 25 headers of loadgen's `--headers` table, read from its source so that both send the same. */
function loadgenHeaders(): [string, string][] {
  const source = readFileSync(join(ROOT, "bench/load/loadgen.c"), "utf8");
  const table = /REAL_HEADERS\[\]\[2\] = \{([\s\S]*?)\n\};/.exec(source)?.[1] ?? "";
  const headers = [...table.matchAll(/\{"([^"]+)", "((?:[^"\\]|\\.)*)"\}/g)].map((
    m,
  ): [string, string] => [m[1], m[2].replace(/\\(.)/g, "$1")]);
  if (headers.length !== 25) throw new Error(`found ${headers.length} headers in loadgen.c's REAL_HEADERS, not 25`);
  return headers;
}

/** The message file for `smtp-source -F`: 25 headers, a blank line, 1 KiB of body as loadgen sends it (CRLF lines). */
function writeMessage(): string {
  const line = Array.from({ length: 62 }, (_, i) => String.fromCharCode(97 + i % 26)).join("");
  const text = loadgenHeaders().map(([name, value]) => `${name}: ${value}\n`).join("") + "\n" +
    `${line}\n`.repeat(1024 / 64);
  const file = join(build, "message.eml");
  writeFileSync(file, text);
  return file;
}

function compile(): void {
  try {
    execFileSync("gcc", ["-O2", "-o", join(build, "filter-c"), join(ROOT, "bench/filters/filter.c"), "-lmilter"], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    execFileSync("/usr/bin/python3", ["-c", "import Milter"], { stdio: "ignore" });
    execFileSync("sh", ["-c", "command -v smtp-source && command -v smtp-sink && command -v postfix"], {
      stdio: "ignore",
    });
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr ?? "";
    throw new Error(
      `${stderr}${error}\ninstall: apt-get install -y gcc libc6-dev libmilter-dev python3-milter postfix`,
    );
  }
}

function filterCommand(who: Exclude<Contender, "no milter">, spec: string): [string, string[], Record<string, string>] {
  switch (who) {
    case "C":
      return [join(build, "filter-c"), [spec, FILTER_OPTION], {}];
    case "pymilter":
      return ["/usr/bin/python3", [join(ROOT, "bench/filters/filter.py"), spec, FILTER_OPTION], {}];
    case "node":
    case "node (no pipelining)": {
      const [cmd, args] = command("node", join(ROOT, "bench/filters/filter.ts"));
      return [cmd, [...args, spec, FILTER_OPTION], who === "node" ? {} : { PIPELINE_BYTES: "0" }];
    }
  }
}

/** CPU seconds used so far by `pid` (all threads). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** Starts a filter on a unix socket that Postfix's smtpd may use; its socket spec and process. */
async function startFilter(who: Exclude<Contender, "no milter">, dir: string): Promise<[string, ChildProcess]> {
  const socket = join(dir, "milter.sock");
  const [cmd, args, env] = filterCommand(who, `unix:${socket}`);
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (t: string) => (stderr += t));
  await waitListening(
    `unix:${socket}`,
    () => child.exitCode !== null || child.signalCode !== null ? stderr : null,
  );
  chmodSync(socket, 0o666);
  return [`unix:${socket}`, child];
}

/** smtp-source sending without pause in SESSIONS parallel sessions, and how many messages Postfix has accepted. */
class Source {
  readonly #child: ChildProcess;
  #accepted = 0;
  #stderr = "";
  #failed: string | null = null;
  #stopped = false;

  constructor(port: number, message: string) {
    this.#child = spawn("smtp-source", [
      "-c", // prints the count, then \r, after each message's DATA is answered
      "-s",
      String(SESSIONS),
      "-m",
      "100000000",
      "-F",
      message,
      "-f",
      FROM,
      "-t",
      TO,
      "-M",
      "client.example",
      `127.0.0.1:${port}`,
    ], { stdio: ["ignore", "pipe", "pipe"] });
    let pending = "";
    this.#child.stdout!.setEncoding("latin1").on("data", (text: string) => {
      const counts = (pending + text).split("\r");
      pending = counts.pop()!;
      if (counts.length) this.#accepted = Number(counts.at(-1));
    });
    this.#child.stderr!.setEncoding("utf8").on("data", (t: string) => (this.#stderr += t));
    this.#child.once(
      "exit",
      (code, signal) => {
        if (!this.#stopped) this.#failed = `smtp-source exited (${code ?? signal}): ${this.#stderr}`;
      },
    );
  }

  /** Messages accepted so far; throws if smtp-source stopped before {@linkcode stop}. */
  get accepted(): number {
    if (this.#failed !== null) throw new Error(this.#failed);
    return this.#accepted;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.#child.once("exit", resolve));
    this.#child.kill("SIGKILL");
    await exited;
  }
}

const sleep = (seconds: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

/** Resolves once Postfix's queue is empty, or throws after `timeout` ms. */
async function drained(postfix: PrivatePostfix, timeout = 30_000): Promise<void> {
  for (const deadline = Date.now() + timeout; Date.now() < deadline;) {
    if ((await postfix.queue()).length === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`Postfix's queue did not empty within ${timeout} ms; maillog:\n${postfix.maillog().slice(-3000)}`);
}

async function measure(who: Contender, message: string): Promise<Sample> {
  const dir = mkdtempSync(join(build, "run-"));
  chmodSync(dir, 0o755);
  const sinkDir = join(dir, "sink");
  mkdirSync(sinkDir);
  const postfixUser = readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith("postfix:"));
  const [uid, gid] = (postfixUser ?? "").split(":").slice(2, 4).map(Number);
  chownSync(sinkDir, uid, gid);
  const sinkPort = await freePort();
  const dump = join(sinkDir, "dump");
  // Without -d: one dump file appended to, rather than a file per message.
  const sink = spawn("smtp-sink", ["-u", "postfix", "-D", dump, `127.0.0.1:${sinkPort}`, "256"], { stdio: "ignore" });
  let filter: ChildProcess | null = null;
  let postfix: PrivatePostfix | null = null;
  try {
    let spec = "";
    if (who !== "no milter") [spec, filter] = await startFilter(who, dir);
    postfix = await PrivatePostfix.start(spec, { relayhost: `[127.0.0.1]:${sinkPort}`, ...POSTCONF });
    const source = new Source(postfix.smtpPort, message);
    let count: number, seconds: number, filterCores: number;
    try {
      await sleep(WARMUP);
      const [count0, cpu0, t0] = [source.accepted, filter ? cpuSeconds(filter.pid!) : 0, process.hrtime.bigint()];
      await sleep(SECONDS);
      const [count1, cpu1, t1] = [source.accepted, filter ? cpuSeconds(filter.pid!) : 0, process.hrtime.bigint()];
      seconds = Number(t1 - t0) / 1e9;
      count = count1 - count0;
      filterCores = (cpu1 - cpu0) / seconds;
    } finally {
      await source.stop();
    }
    const accepted = source.accepted;
    await drained(postfix);
    // What smtp-sink got: every message accepted (and those whose answer smtp-source had not read yet when it
    // stopped), each with the filter's header; no milter trouble logged.
    const text = readFileSync(dump, "latin1");
    const delivered = text.match(/^X-Mail-Args: /gm)?.length ?? 0;
    const marked = text.match(MARK)?.length ?? 0;
    const warnings = postfix.maillog().split("\n").filter((l) => /warning: .*milter/i.test(l));
    if (delivered < accepted || marked !== (who === "no milter" ? 0 : delivered) || warnings.length > 0) {
      throw new Error(
        `${who}: smtp-sink got ${delivered} messages of ${accepted} accepted, ${marked} with the filter's header` +
          (warnings.length ? `; Postfix warned:\n${warnings.slice(0, 5).join("\n")}` : ""),
      );
    }
    return { rate: count / seconds, messages: count, seconds, filterCores };
  } finally {
    await postfix?.stop();
    filter?.kill("SIGKILL");
    sink.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]): number => xs.toSorted((a, b) => a - b)[Math.floor(xs.length / 2)];

compile();
const message = writeMessage();
const started = Date.now();
const samples = new Map<Contender, Sample[]>(contenders.map((who) => [who, []]));
for (let round = 0; round < ROUNDS; round++) {
  for (const who of contenders) {
    const sample = await measure(who, message);
    samples.get(who)!.push(sample);
    console.error(
      `[${((Date.now() - started) / 1000).toFixed(0)} s] ${who}: ${sample.rate.toFixed(0)}/s ` +
        `(${sample.messages} messages in ${sample.seconds.toFixed(1)} s)`,
    );
  }
}

const rate = (who: Contender): number | null => samples.has(who) ? median(samples.get(who)!.map((s) => s.rate)) : null;
const lines: string[] = [
  `Postfix ${execFileSync("postconf", ["-dh", "mail_version"], { encoding: "utf8" }).trim()}, smtp-source with ` +
  `${SESSIONS} sessions in parallel, one message per session: 25 headers, 1 KiB body. ${SECONDS} s measured ` +
  `after ${WARMUP} s of warm-up per run, queue ${TMPFS ? "in /dev/shm" : "on disk"}; ${
    ROUNDS > 1 ? `median of ${ROUNDS} interleaved rounds` : "1 round"
  }. ${
    opts.readme
      ? "Every filter is the README's quick-start filter (envrcpt and eom only)."
      : 'Every filter negotiates NR_HDR and NR_BODY; "node (no pipelining)" runs with PIPELINE_BYTES=0.'
  }`,
  "",
  "| contender | messages/s | filter CPU (cores) | ÷ no milter | ÷ C | ÷ pymilter |",
  "| --------- | ---------: | -----------------: | ----------: | --: | ---------: |",
];
for (const [who, list] of samples) {
  const r = rate(who)!;
  const ratio = (base: Contender): string => {
    const b = rate(base);
    return b !== null && who !== base && who !== "no milter" ? `${(r / b).toFixed(2)}×` : "";
  };
  lines.push(
    `| ${who} | ${r.toFixed(0)}${ROUNDS > 1 ? ` (${list.map((s) => s.rate.toFixed(0)).join(", ")})` : ""} | ` +
      `${median(list.map((s) => s.filterCores)).toFixed(2)} | ${ratio("no milter")} | ${ratio("C")} | ` +
      `${ratio("pymilter")} |`,
  );
}
console.log(lines.join("\n"));
console.error(`done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
