/**
 * The README as the end-to-end suites read it: its fenced blocks, and its
 * quick-start filter run as a newcomer would (the code block saved as
 * milter.mts, only the package import pointed at this checkout and the port
 * made free, run with tsx).
 */

import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { pathToFileURL } from "node:url";
import { freePort, waitListening } from "../helpers/filter.ts";
import { ROOT } from "../helpers/runtimes.ts";

/** The first fenced block of `language` after the heading `## <title>` in the README. */
export function readmeBlock(title: string, language: string): string {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf(`\n## ${title}\n`));
  const match = section.match(new RegExp("```" + language + "\\n([\\s\\S]*?)```"));
  if (!match) throw new Error(`no ${language} block under "## ${title}" in README.md`);
  return match[1];
}

/** The README's quick-start filter, listening; `stop` ends it. */
export interface QuickStart {
  readonly port: number;
  stop(): void;
}

/** Saves the quick-start code block in `dir` and runs it until it listens. */
export async function startQuickStart(dir: string): Promise<QuickStart> {
  const port = await freePort();
  const file = join(dir, "milter.mts");
  writeFileSync(
    file,
    readmeBlock("Quick start", "ts")
      .replace('"@milterjs/milter"', JSON.stringify(pathToFileURL(join(ROOT, "mod.ts")).href))
      .replace("inet:8890@127.0.0.1", `inet:${port}@127.0.0.1`),
  );
  const filter = spawn(process.execPath, ["--import", "tsx", file], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  filter.stderr!.on("data", (t) => (stderr += t));
  try {
    await waitListening(`inet:${port}@127.0.0.1`, () => filter.exitCode !== null ? stderr : null);
  } catch (error) {
    filter.kill("SIGTERM");
    throw error;
  }
  return { port, stop: () => filter.kill("SIGTERM") };
}
