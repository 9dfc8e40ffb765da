/**
 * The npm build: dist/ runs under plain `node` with no TypeScript tooling,
 * and its declarations type-check a consumer.
 */

import { execFile } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, test } from "vitest";
import { ROOT } from "./helpers/runtimes.ts";

const run = promisify(execFile);
const checkDir = join(ROOT, "dist-check");

beforeAll(async () => {
  await run(process.execPath, ["scripts/build.mjs"], { cwd: ROOT });
}, 120_000);
afterAll(() => rmSync(checkDir, { recursive: true, force: true }));

test("the declarations point at .js files, as older compilers and type checkers of packages expect", () => {
  const declarations = readdirSync(join(ROOT, "dist"), { recursive: true, encoding: "utf8" }).filter((f) =>
    f.endsWith(".d.ts")
  );
  expect(declarations.length).toBeGreaterThan(10);
  for (const file of declarations) {
    expect(readFileSync(join(ROOT, "dist", file), "utf8"), file).not.toMatch(/from\s+["']\.{1,2}\/[^"']+\.ts["']/);
  }
});

test("plain node imports the package by name and runs a filter", async () => {
  const { stdout } = await run(process.execPath, [join(ROOT, "test/fixtures/plain-node.mjs")], {
    cwd: ROOT,
    timeout: 60_000,
  });
  expect(JSON.parse(stdout)).toEqual({
    version: [1, 0, 1],
    reply: { action: "continue" },
    modifications: [{ type: "addheader", name: "X-Plain-Node", value: process.version }],
  });
});

test("the milter-test command runs under plain node from dist/", async () => {
  const bin = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).bin["milter-test"];
  expect(readFileSync(join(ROOT, bin), "utf8")).toMatch(/^#!\/usr\/bin\/env node\n/);
  const { stdout } = await run(process.execPath, [join(ROOT, bin), "--help"], { cwd: ROOT });
  expect(stdout).toMatch(/^usage: milter-test \[options\] <socket> \[message.eml\]/);
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
