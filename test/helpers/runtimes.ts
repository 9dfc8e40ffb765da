/**
 * The three runtimes the suite runs filters under, installed from npm as dev
 * dependencies. A runtime that cannot start fails the tests that need it.
 */

import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import process from "node:process";

export type Runtime = "node" | "deno" | "bun";
export const RUNTIMES: readonly Runtime[] = ["node", "deno", "bun"];

export const ROOT: string = fileURLToPath(new URL("../../", import.meta.url));
const bin = (name: string): string => `${ROOT}node_modules/.bin/${name}`;

/** The command line that runs a TypeScript file under `runtime`. */
export function command(runtime: Runtime, file: string): [string, string[]] {
  switch (runtime) {
    case "node":
      return [process.execPath, ["--import", "tsx", file]];
    case "deno":
      return [bin("deno"), [
        "run",
        "--quiet",
        "--allow-ffi",
        "--allow-env",
        "--allow-net",
        "--allow-read",
        "--allow-write",
        file,
      ]];
    case "bun":
      return [bin("bun"), [file]];
  }
}

/** The runtime's version, or throws naming what is missing. */
export function runtimeVersion(runtime: Runtime): string {
  if (runtime === "node") return process.version;
  const path = bin(runtime);
  if (!existsSync(path)) throw new Error(`${runtime} is not installed (expected ${path}; run npm ci)`);
  return execFileSync(path, ["--version"], { encoding: "utf8" }).trim().split("\n")[0].split(" (")[0];
}
