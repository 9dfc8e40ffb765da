/**
 * Runs `milter-test`: as a user runs it (a process, under one runtime), or
 * in this process through its `main` (faster, for what the process adds
 * nothing to).
 */

import { spawn } from "node:child_process";
import process from "node:process";
import { type CliIO, main } from "../../src/testing/cli.ts";
import { ROOT, runtimeBinary } from "./runtimes.ts";

/** What one run printed, and its exit code. */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** How each runtime runs the CLI; Deno with the permissions the README names. */
export const RUN_CLI = {
  node: [process.execPath, "--import", "tsx", "bin/milter-test.ts"],
  deno: [runtimeBinary("deno"), "run", "--allow-net", "--allow-read", "--allow-write", "bin/milter-test.ts"],
  bun: [runtimeBinary("bun"), "bin/milter-test.ts"],
};

/** Runs the CLI as a process, `stdin` on its standard input. */
export function cli(args: string[], stdin?: string, runtime: keyof typeof RUN_CLI = "node"): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const [cmd, ...pre] = RUN_CLI[runtime];
    const child = spawn(cmd, [...pre, ...args], { cwd: ROOT });
    let stdout = "", stderr = "";
    child.stdout.setEncoding("utf8").on("data", (t: string) => (stdout += t));
    child.stderr.setEncoding("utf8").on("data", (t: string) => (stderr += t));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin ?? "");
  });
}

/** Runs the CLI's `main` in this process, `stdin` (bytes) on its standard input. */
export async function cliInProcess(args: string[], stdin: Uint8Array = new Uint8Array(0)): Promise<CliRun> {
  let stdout = "", stderr = "";
  const io: CliIO = {
    stdout: (text) => void (stdout += text),
    stderr: (text) => void (stderr += text),
    readStdin: () => Promise.resolve(stdin),
  };
  const code = await main(args, io);
  return { code, stdout, stderr };
}
