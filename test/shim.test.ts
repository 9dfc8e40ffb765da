/**
 * The native shim (ffi/shim/milter_shim.c, shipped prebuilt) and its loader
 * (ffi/shim.ts):
 *
 * - the build: `scripts/build-shim.sh --check` verifies the three committed
 *   objects and that they are what the source builds to; a C harness
 *   (test/fixtures/shim-harness.c) runs each object (x64 glibc and musl
 *   natively, arm64 under qemu) and checks the thread it starts (detached,
 *   every signal blocked, done called) and the wrappers of ABI 2: arguments
 *   and tokens passed through, synchronous answers at once, PENDING callers
 *   waiting for their reply, stale tokens refused, a reply that beats the
 *   wait kept, 64 callers waiting at once;
 * - on this machine: openShim() picks the object, smfi_main of the real
 *   libmilter serves on the shim's thread under Node, Deno and Bun, stops
 *   with done(0), and process.exit() ends a process running it at once
 *   (the reason the shim exists: through koffi's `.async`, Node hangs);
 *   Shim.wrap/reply/waiting work through koffi in each runtime;
 * - on arm64: the same, in an arm64 Node under qemu with Debian's arm64
 *   libmilter, provisioned by scripts/arm64-sysroot.sh.
 *
 * Compilers, qemu and the arm64 downloads are part of CI (CI=true): there a
 * missing one fails the test. Elsewhere such a test is skipped, saying what
 * is missing.
 */

import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
import koffi from "koffi";
import { afterAll, describe, expect, test, type TestContext } from "vitest";
import { functionAddress } from "../ffi/dl.ts";
import { openShim, PREBUILT_TARGETS, SHIM_ABI, shimTarget } from "../ffi/shim.ts";
import { command, ROOT, type Runtime, RUNTIMES } from "./helpers/runtimes.ts";

const run = promisify(execFile);
const IN_CI = process.env.CI === "true";
const FIXTURE = join(ROOT, "test/fixtures/shim-run.ts");
const HARNESS = join(ROOT, "test/fixtures/shim-harness.c");
const LIBMILTER = "libmilter.so.1.0.1";

const scratch = mkdtempSync(join(tmpdir(), "milter-shim-test-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

let sockets = 0;
const socketPath = (): string => join(scratch, `m${++sockets}.sock`);

/** Fails in CI, skips elsewhere: a missing tool or download outside CI is not a failure of this code. */
function missing(ctx: TestContext, what: string): never {
  if (IN_CI) throw new Error(`${what} (CI=true: required)`);
  return ctx.skip(`${what}; skipped outside CI`);
}

function hasTool(name: string): boolean {
  return (process.env.PATH ?? "").split(":").some((dir) => dir !== "" && existsSync(join(dir, name)));
}

// deno-lint-ignore no-explicit-any
type Event = Record<string, any>;

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Milliseconds from spawn to exit (or to the bound). */
  ms: number;
  /** The child outlived `bound` and was killed. */
  timedOut: boolean;
}

/**
 * Runs a child to its exit, collecting what it prints. The bound
 * is only a bound: the result comes from the child's exit event, and a child
 * still alive at the bound is killed and reported as timed out.
 */
function runChild(cmd: string, args: string[], env: Record<string, string>, bound: number): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.setEncoding("utf8").on("data", (text: string) => stdout += text);
    child.stderr.setEncoding("utf8").on("data", (text: string) => stderr += text);
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, bound);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Math.round(performance.now() - started), timedOut });
    });
  });
}

/** The JSON lines a fixture printed. */
const eventsOf = (result: ChildResult): Event[] =>
  result.stdout.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line) as Event);
const eventOf = (result: ChildResult, name: string): Event | undefined =>
  eventsOf(result).find((e) => e.event === name);

/** What test/fixtures/shim-run.ts reports with SHIM_MODE=async (see asyncChecks there). */
const ASYNC_EXPECTED = {
  event: "async",
  pendingCode: 65536,
  nulls: [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12], // only header (4) and eoh (5) have handlers
  again: expect.stringMatching(/already in use/), // a second wrap() throws
  sync: 3, // the handler's own answer
  headerSync: 3,
  headers: [["Subject", "hello", "number"]], // the arguments, and the token as a Number
  tokenSafe: true,
  pendingWhileWaiting: 1,
  fractionReply: false, // token + 0.5 must not reach the call
  firstReply: true,
  secondReply: false,
  waited: 5, // the replied code
  afterReply: false,
  earlyReply: true, // reply() inside the handler, before it returns pendingCode
  early: 8,
  pendingAtEnd: 0,
  made: [false, false, false],
};

describe("the prebuilt objects", () => {
  test("scripts/build-shim.sh --check: machine, exports, NEEDED, glibc versions, and identical to a fresh build", async (ctx) => {
    const tools = ["gcc", "aarch64-linux-gnu-gcc", "musl-gcc", "readelf"].filter((t) => !hasTool(t));
    if (tools.length) missing(ctx, `no ${tools.join(", ")}`);
    const { stdout } = await run("sh", [join(ROOT, "scripts/build-shim.sh"), "--check"], { cwd: ROOT });
    expect(stdout).toContain("all objects verified");
  });

  const harnessTargets: [target: string, compiler: string, runner: string[], link: string[]][] = [
    ["linux-x64-gnu", "gcc", [], ["-ldl"]],
    ["linux-x64-musl", "musl-gcc", [], []],
    ["linux-arm64-gnu", "aarch64-linux-gnu-gcc", ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"], ["-ldl"]],
  ];
  test.for(harnessTargets)(
    "%s, driven from C: start_main's thread; wrap, reply and pending with 64 callers waiting at once",
    async ([target, compiler, runner, link], ctx) => {
      const tools = [compiler, ...runner.slice(0, 1)].filter((t) => !hasTool(t));
      if (tools.length) missing(ctx, `no ${tools.join(", ")}`);
      const exe = join(scratch, `harness-${target}`);
      await run(compiler, ["-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", exe, HARNESS, ...link]);
      const object = join(ROOT, "ffi/shim/prebuilt", target, "libmilter_shim.so");
      const [cmd, ...args] = [...runner, exe, object];
      const result = await runChild(cmd, args, {}, 30_000);
      expect(result.timedOut, result.stdout).toBe(false);
      expect(result.stdout).not.toContain("FAIL");
      expect(result.code, result.stdout + result.stderr).toBe(0);
    },
  );
});

describe("on this machine", () => {
  test("openShim() loads this platform's object, ABI 2, once", (ctx) => {
    if (process.platform !== "linux" || !["x64", "arm64"].includes(process.arch)) {
      missing(ctx, `no prebuilt object for ${process.platform}-${process.arch}`);
    }
    const target = shimTarget();
    expect(target).toBe(`linux-${process.arch}-gnu`); // this suite runs on Debian, with musl installed beside glibc
    expect(PREBUILT_TARGETS).toContain(target);
    const shim = openShim();
    if ("reason" in shim) throw new Error(shim.reason);
    expect(shim.abi).toBe(SHIM_ABI);
    expect(shim.path).toBe(join(ROOT, "ffi/shim/prebuilt", target!, "libmilter_shim.so"));
    expect(openShim()).toBe(shim);
  });

  test("functionAddress() finds smfi_main in the loaded libmilter, and nothing where there is nothing", () => {
    expect(functionAddress(LIBMILTER, "smfi_main")).toBeNull(); // not loaded yet: RTLD_NOLOAD
    koffi.load(LIBMILTER);
    const address = functionAddress(LIBMILTER, "smfi_main");
    expect(typeof address).toBe("bigint");
    expect(address).not.toBe(0n);
    expect(functionAddress(LIBMILTER, "smfi_main")).toBe(address);
    expect(functionAddress(LIBMILTER, "no_such_function")).toBeNull();
    expect(functionAddress("libnot-a-library.so.9", "smfi_main")).toBeNull();
  });

  test("MILTER_SHIM_PATH overrides the search; a file that is not a shim is refused with the reason", async () => {
    const [cmd, args] = command("node", FIXTURE);
    const env = { SHIM_MODE: "open", SHIM_SOCKET: socketPath() };
    const other = join(ROOT, "ffi/shim/prebuilt", shimTarget()!, "libmilter_shim.so");
    const good = await runChild(cmd, args, { ...env, MILTER_SHIM_PATH: other }, 30_000);
    expect(eventOf(good, "shim")).toMatchObject({ path: other, abi: SHIM_ABI });
    const absent = await runChild(cmd, args, { ...env, MILTER_SHIM_PATH: join(scratch, "absent.so") }, 30_000);
    expect(eventOf(absent, "unavailable")?.reason).toMatch(
      /cannot load the milter shim .*absent\.so.*check MILTER_SHIM_PATH/,
    );
    const wrong = await runChild(cmd, args, { ...env, MILTER_SHIM_PATH: LIBMILTER }, 30_000);
    expect(eventOf(wrong, "unavailable")?.reason).toMatch(/libmilter\.so\.1\.0\.1 is not a milter shim/);
  });

  describe.each(RUNTIMES)("under %s", (runtime: Runtime) => {
    test("wrap(), reply() and pending(): a handler answers at once, later, or before it returns pending", async () => {
      const [cmd, args] = command(runtime, FIXTURE);
      const result = await runChild(cmd, args, { SHIM_MODE: "async", SHIM_SOCKET: socketPath() }, 20_000);
      expect(result.timedOut, result.stderr).toBe(false);
      expect(eventOf(result, "async"), result.stderr).toEqual(ASYNC_EXPECTED);
      expect(result.code, result.stderr).toBe(0);
    });

    test("smfi_main serves on the shim's thread, and smfi_stop brings done(0); then the process ends by itself", async () => {
      const [cmd, args] = command(runtime, FIXTURE);
      const result = await runChild(cmd, args, { SHIM_MODE: "stop", SHIM_SOCKET: socketPath() }, 20_000);
      expect(result.timedOut, result.stderr).toBe(false);
      expect(eventOf(result, "serving")).toBeDefined();
      expect(eventOf(result, "done")).toMatchObject({ rc: 0, stopping: true });
      expect(result.code, result.stderr).toBe(0);
    });

    test("process.exit(7) while smfi_main runs ends the process at once, with code 7", async () => {
      const [cmd, args] = command(runtime, FIXTURE);
      const env = { SHIM_MODE: "exit", SHIM_EXIT_CODE: "7", SHIM_SOCKET: socketPath() };
      const result = await runChild(cmd, args, env, 10_000);
      expect(result.timedOut, `still running 10 s after start: ${result.stderr}`).toBe(false);
      expect(eventOf(result, "serving")).toBeDefined();
      expect(eventOf(result, "done")).toBeUndefined();
      expect([result.code, result.signal], result.stderr).toEqual([7, null]);
    });
  });
});

describe("on arm64, under qemu", () => {
  let arm64: Record<string, string> | undefined;

  /** scripts/arm64-sysroot.sh's paths, provisioning on first use. */
  async function provision(ctx: TestContext): Promise<Record<string, string>> {
    if (arm64) return arm64;
    if (process.platform !== "linux") missing(ctx, "arm64 emulation needs Linux");
    let stdout: string;
    try {
      ({ stdout } = await run("sh", [join(ROOT, "scripts/arm64-sysroot.sh")], { cwd: ROOT, timeout: 300_000 }));
    } catch (error) {
      const stderr = (error as { stderr?: string }).stderr ?? String(error);
      return missing(ctx, `scripts/arm64-sysroot.sh failed: ${stderr.trim().split("\n").at(-1)}`);
    }
    arm64 = Object.fromEntries(stdout.trim().split("\n").map((line) => line.split("=", 2) as [string, string]));
    return arm64;
  }

  async function runArm64(ctx: TestContext, env: Record<string, string>, bound: number): Promise<ChildResult> {
    const paths = await provision(ctx);
    return runChild(
      paths.ARM64_QEMU,
      ["-L", paths.ARM64_SYSROOT, paths.ARM64_NODE, FIXTURE],
      { NODE_PATH: paths.ARM64_NODE_PATH, ...env },
      bound,
    );
  }

  test(
    "an arm64 Node loads the linux-arm64-gnu object; arm64 libmilter serves on its thread and stops with done(0)",
    async (ctx) => {
      const result = await runArm64(ctx, { SHIM_MODE: "stop", SHIM_SOCKET: socketPath() }, 60_000);
      expect(result.timedOut, result.stderr).toBe(false);
      expect(eventOf(result, "shim")).toMatchObject({
        abi: SHIM_ABI,
        target: "linux-arm64-gnu",
        path: join(ROOT, "ffi/shim/prebuilt/linux-arm64-gnu/libmilter_shim.so"),
      });
      expect(eventOf(result, "serving")).toBeDefined();
      expect(eventOf(result, "done")).toMatchObject({ rc: 0, stopping: true });
      expect(result.code, result.stderr).toBe(0);
    },
    360_000,
  );

  test("in the arm64 Node, wrap(), reply() and pending() answer at once, later, or early", async (ctx) => {
    const result = await runArm64(ctx, { SHIM_MODE: "async", SHIM_SOCKET: socketPath() }, 60_000);
    expect(result.timedOut, result.stderr).toBe(false);
    expect(eventOf(result, "async"), result.stderr).toEqual(ASYNC_EXPECTED);
    expect(result.code, result.stderr).toBe(0);
  }, 360_000);

  test("process.exit(7) in the arm64 Node ends it at once, with code 7", async (ctx) => {
    const result = await runArm64(ctx, { SHIM_MODE: "exit", SHIM_EXIT_CODE: "7", SHIM_SOCKET: socketPath() }, 15_000);
    expect(result.timedOut, `still running 15 s after start: ${result.stderr}`).toBe(false);
    expect(eventOf(result, "serving")).toBeDefined();
    expect([result.code, result.signal], result.stderr).toEqual([7, null]);
  }, 360_000);
});
