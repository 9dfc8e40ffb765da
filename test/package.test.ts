/**
 * The npm package as users get it: `npm pack`, installed into a fresh
 * project, then imported by name under Node 20 (this machine's), 22 and 24
 * (from the npm registry's node-<platform>-<arch> packages, installed on
 * first use into node_modules/.cache) and Bun; its `milter-test` command
 * under each. Under each, the installed package finds its prebuilt native
 * shim (it is in the tarball for every target), main runs on it, and
 * process.exit() ends the process at once. And Deno with exactly the
 * permissions the README names.
 *
 * dist/ itself: plain `node` imports the package by name with no TypeScript
 * tooling, and its declarations type-check a consumer. One file, so that only
 * one build (npm pack's prepack) writes dist/ at a time.
 */

import { execFile, execFileSync, spawn } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { freePort, waitListening } from "./helpers/filter.ts";
import { ROOT, runtimeBinary } from "./helpers/runtimes.ts";
import { MilterClient } from "../src/testing/mod.ts";

const run = promisify(execFile);
const work = mkdtempSync(join(tmpdir(), "milter-package-"));
const project = join(work, "consumer");
const checkDir = join(ROOT, "dist-check");
let tarball = "";
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
  rmSync(checkDir, { recursive: true, force: true });
});

/** The `node` binary of a major version, installed from the npm registry on first use. */
function nodeBinary(major: number): string {
  const name = `node-${process.platform}-${process.arch}`;
  const prefix = join(ROOT, "node_modules/.cache/milter-node", String(major));
  const bin = join(prefix, "node_modules", name, "bin/node");
  if (!existsSync(bin)) {
    mkdirSync(prefix, { recursive: true });
    execFileSync("npm", ["install", "--prefix", prefix, "--no-save", "--no-audit", "--no-fund", `${name}@${major}`], {
      stdio: "ignore",
    });
  }
  return bin;
}

beforeAll(async () => {
  // npm pack runs prepack, which builds dist/.
  const { stdout } = await run("npm", ["pack", "--pack-destination", work, "--silent"], { cwd: ROOT });
  tarball = join(work, stdout.trim().split("\n").at(-1)!);
  mkdirSync(project);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  await run("npm", ["install", "--no-audit", "--no-fund", tarball], { cwd: project });
  copyFileSync(join(ROOT, "test/fixtures/packed-consumer.mjs"), join(project, "consumer.mjs"));
}, 300_000);

/** The prebuilt shims the package ships, `<os>-<arch>-<libc>`. */
const TARGETS = ["linux-x64-gnu", "linux-arm64-gnu", "linux-x64-musl"];
/** This machine's target, told apart without the package's own code. */
const libc = (process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header.glibcVersionRuntime
  ? "gnu"
  : "musl";
const TARGET = `${process.platform}-${process.arch}-${libc}`;
/** What src/main.ts writes to stderr when main runs without the shim. */
const NO_SHIM = "worker pool instead";
/** The environment of the consumers: no override of the shim's path. */
const consumerEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.MILTER_SHIM_PATH;
  return env;
};
/** Where the installed package's prebuilt shim for this machine lies. */
const installedShim = (): string =>
  join(realpathSync(project), "node_modules/@milterjs/milter/dist/ffi/shim/prebuilt", TARGET, "libmilter_shim.so");

test("the tarball carries the prebuilt shim of every target, and npm installs them", async () => {
  const { stdout } = await run("tar", ["-tzf", tarball]);
  const files = stdout.split("\n");
  for (const target of TARGETS) {
    const path = `dist/ffi/shim/prebuilt/${target}/libmilter_shim.so`;
    expect(files, path).toContain(`package/${path}`);
    expect(existsSync(join(project, "node_modules/@milterjs/milter", path)), path).toBe(true);
  }
  expect(TARGETS).toContain(TARGET);
});

const RUNTIMES: [string, () => string, RegExp][] = [
  ["Node 20 (this machine's)", () => process.execPath, /^node v20\./],
  ["Node 22", () => nodeBinary(22), /^node v22\./],
  ["Node 24", () => nodeBinary(24), /^node v24\./],
  ["Bun", () => runtimeBinary("bun"), /^bun 1\./],
];

describe.each(RUNTIMES)("the packed package under %s", (_name, binary, version) => {
  test("imports by name, runs a filter on its prebuilt shim, answers the test client", async () => {
    const { stdout, stderr } = await run(binary(), ["consumer.mjs"], {
      cwd: project,
      timeout: 60_000,
      env: consumerEnv(),
    });
    const out = JSON.parse(stdout);
    expect(out.runtime).toMatch(version);
    expect(out.version).toEqual([1, 0, 1]); // the system libmilter, loaded by the installed package
    expect(out.reply).toEqual({ action: "continue" });
    expect(out.modifications).toEqual([{ type: "addheader", name: "X-Runtime", value: out.runtime }]);
    // main ran on the shim the package ships, not on the runtime's worker pool.
    expect(out.shims).toEqual([installedShim()]);
    expect(stderr).not.toContain(NO_SHIM);
  }, 300_000);

  test("process.exit(7) while main runs ends the process at once, with code 7", async () => {
    const child = spawn(binary(), ["consumer.mjs"], {
      cwd: project,
      env: consumerEnv({ EXIT_AFTER_MAIN: "7" }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "", stderr = "", running = 0;
    child.stderr.setEncoding("utf8").on("data", (text: string) => (stderr += text));
    child.stdout.setEncoding("utf8").on("data", (text: string) => {
      stdout += text;
      if (stdout.includes("\n")) running ||= Date.now();
    });
    const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    const exit = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      child.on("exit", (code, signal) => resolve([code, signal]))
    );
    const exited = Date.now();
    clearTimeout(killer);
    expect(exit, stderr).toEqual([7, null]);
    expect(stderr).not.toContain(NO_SHIM);
    const out = JSON.parse(stdout);
    expect(out.runtime).toMatch(version);
    expect(out.modifications).toEqual([{ type: "addheader", name: "X-Runtime", value: out.runtime }]);
    expect(out.shims).toEqual([installedShim()]);
    expect(running).toBeGreaterThan(0);
    expect(exited - running).toBeLessThan(5000); // without the shim, Node would wait for the filter to stop
  }, 300_000);

  test("its milter-test command runs", async () => {
    const { stdout } = await run(binary(), ["node_modules/.bin/milter-test", "--help"], { cwd: project });
    expect(stdout).toMatch(/^usage: milter-test/);
  }, 300_000);
});

test("Deno runs a filter with exactly the README's permissions (inet socket)", async () => {
  const spec = `inet:${await freePort()}@127.0.0.1`;
  const deno = execFile(
    runtimeBinary("deno"),
    ["run", "--allow-ffi", "--allow-env", "--allow-net", "examples/stamp.ts"],
    { cwd: ROOT, env: { ...process.env, MILTER_SOCKET: spec } },
  );
  let stderr = "";
  deno.stderr!.on("data", (t) => (stderr += t));
  const exited = new Promise<number | null>((resolve) => deno.on("exit", resolve));
  try {
    await waitListening(spec, () => deno.exitCode !== null ? stderr : null);
    const client = await MilterClient.open(spec);
    await client.connect("deno.example", null);
    const result = await client.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "" });
    expect(result.modifications).toEqual([
      { type: "addheader", name: "X-Filtered-By", value: "stamp; from deno.example" },
    ]);
    client.quit();
    deno.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(stderr).not.toMatch(/permission|Requires/i);
  } finally {
    deno.kill("SIGKILL");
  }
}, 60_000);

test("the declarations point at .js files, as older compilers and type checkers of packages expect", () => {
  const declarations = readdirSync(join(ROOT, "dist"), { recursive: true, encoding: "utf8" }).filter((f) =>
    f.endsWith(".d.ts")
  );
  expect(declarations.length).toBeGreaterThan(10);
  for (const file of declarations) {
    expect(readFileSync(join(ROOT, "dist", file), "utf8"), file).not.toMatch(/from\s+["']\.{1,2}\/[^"']+\.ts["']/);
  }
});

test("plain node imports the package by name from this checkout's dist/ and runs a filter", async () => {
  const { stdout, stderr } = await run(process.execPath, [join(ROOT, "test/fixtures/packed-consumer.mjs")], {
    cwd: ROOT,
    timeout: 60_000,
    env: consumerEnv(),
  });
  const runtime = `node ${process.version}`;
  expect(JSON.parse(stdout)).toEqual({
    runtime,
    version: [1, 0, 1],
    reply: { action: "continue" },
    modifications: [{ type: "addheader", name: "X-Runtime", value: runtime }],
    shims: [join(realpathSync(ROOT), "dist/ffi/shim/prebuilt", TARGET, "libmilter_shim.so")],
  });
  expect(stderr).not.toContain(NO_SHIM);
});

test("the milter-test command runs under plain node from dist/", async () => {
  const bin = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).bin["milter-test"];
  expect(readFileSync(join(ROOT, bin), "utf8")).toMatch(/^#!\/usr\/bin\/env node\n/);
  const { stdout } = await run(process.execPath, [join(ROOT, bin), "--help"], { cwd: ROOT });
  expect(stdout).toMatch(/^usage: milter-test \[options\] <socket> \[message.eml ...\]/);
});

test("a TypeScript consumer type-checks against the declarations", async () => {
  mkdirSync(checkDir, { recursive: true });
  writeFileSync(
    join(checkDir, "consumer.mts"),
    `import * as Milter from "@milterjs/milter";
import { MilterClient, type Modification } from "@milterjs/milter/testing";
const stat: Milter.Stat = Milter.Stat.Continue;
const filter: Milter.Filter = { ...Milter.empty, name: "typed", eom: (ctx: Milter.Ctx) => { Milter.addheader(ctx, "X", "y"); return stat; } };
const version: [number, number, number] = Milter.version();
const open: (spec: string) => Promise<MilterClient> = MilterClient.open;
const mods: Modification[] = [];
// @ts-expect-error: a Stat is one of the constructor names
const wrong: Milter.Stat = "continue";
export { filter, mods, open, version, wrong };
`,
  );
  writeFileSync(
    join(checkDir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        types: ["node"],
        typeRoots: [join(ROOT, "node_modules/@types")],
      },
      files: ["consumer.mts"],
    }),
  );
  await run(process.execPath, [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", join(checkDir, "tsconfig.json")], {
    cwd: checkDir,
  });
}, 120_000);
