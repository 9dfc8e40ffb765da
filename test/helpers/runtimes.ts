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

/**
 * Where npm puts each runtime's binary. The platform packages hold the real
 * executables whether or not npm ran the packages' install scripts (which
 * only link them into place; without them `.bin/bun` is a placeholder).
 */
function candidates(runtime: "deno" | "bun"): string[] {
  const modules = `${ROOT}node_modules`;
  const { platform, arch } = process;
  const bunArch = arch === "arm64" ? "aarch64" : arch;
  return runtime === "bun"
    ? [
      `${modules}/@oven/bun-${platform}-${bunArch}/bin/bun`,
      `${modules}/@oven/bun-${platform}-${bunArch}-baseline/bin/bun`,
      `${modules}/bun/bin/bun.exe`,
    ]
    : [
      `${modules}/@deno/${platform}-${arch}-glibc/deno`,
      `${modules}/@deno/${platform}-${arch}/deno`,
      `${modules}/deno/deno`,
    ];
}

const resolved = new Map<string, string>();

/** The path of a working `deno` or `bun` binary, or throws naming what is missing. */
export function runtimeBinary(runtime: "deno" | "bun"): string {
  const known = resolved.get(runtime);
  if (known) return known;
  for (const path of candidates(runtime)) {
    if (!existsSync(path)) continue;
    try {
      execFileSync(path, ["--version"], { stdio: "ignore" });
    } catch {
      continue; // a placeholder left by a skipped install script
    }
    resolved.set(runtime, path);
    return path;
  }
  throw new Error(`${runtime} is not installed: none of ${candidates(runtime).join(", ")} runs; run npm ci`);
}

/** The command line that runs a TypeScript file under `runtime`. */
export function command(runtime: Runtime, file: string): [string, string[]] {
  switch (runtime) {
    case "node":
      return [process.execPath, ["--import", "tsx", file]];
    case "deno":
      return [runtimeBinary("deno"), [
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
      return [runtimeBinary("bun"), [file]];
  }
}

/** The runtime's version, or throws naming what is missing. */
export function runtimeVersion(runtime: Runtime): string {
  if (runtime === "node") return process.version;
  return execFileSync(runtimeBinary(runtime), ["--version"], { encoding: "utf8" }).trim().split("\n")[0].split(" (")[0];
}
