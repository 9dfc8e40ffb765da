/**
 * The project's load generator (bench/load/loadgen.c), built once per test
 * file into a temporary directory: the MTA side at the speed of C, one
 * connection per message.
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "./runtimes.ts";

/** A running load generator. */
export interface Load {
  readonly child: ChildProcess;
  /** Resolves with what it printed on stdout (one JSON object) once it exits. */
  readonly output: Promise<string>;
  /** Kills it and waits for its exit. */
  stop(): Promise<void>;
}

/** Builds loadgen; returns a function starting it, and one removing the build. */
export function buildLoadgen(): { start: (spec: string, args: string[]) => Load; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "milter-loadgen-"));
  const binary = join(dir, "loadgen");
  execFileSync("gcc", ["-O2", "-pthread", "-o", binary, join(ROOT, "bench/load/loadgen.c")]);
  return {
    start(spec: string, args: string[]): Load {
      const child = spawn(binary, [spec, ...args], { stdio: ["ignore", "pipe", "ignore"] });
      let out = "";
      child.stdout!.setEncoding("utf8").on("data", (text: string) => out += text);
      const output = new Promise<string>((resolve) => child.once("exit", () => resolve(out)));
      return {
        child,
        output,
        stop: async (): Promise<void> => {
          child.kill("SIGKILL");
          await output;
        },
      };
    },
    remove: (): void => rmSync(dir, { recursive: true, force: true }),
  };
}
