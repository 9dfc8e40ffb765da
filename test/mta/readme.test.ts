/**
 * A newcomer's path, followed literally: the README's quick-start filter
 * (the code block as written, saved as milter.mts, with only the package
 * import pointed at this checkout and the port made free), run with tsx as
 * the README says, behind a Postfix configured with the README's main.cf
 * lines.
 */

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, expect, test } from "vitest";
import { freePort, waitListening } from "../helpers/filter.ts";
import { ROOT } from "../helpers/runtimes.ts";
import { PrivatePostfix, stopAllPostfix } from "./postfix.ts";
import { send } from "./smtp.ts";

const dir = mkdtempSync(join(tmpdir(), "milter-readme-"));
afterAll(async () => {
  await stopAllPostfix();
  rmSync(dir, { recursive: true, force: true });
});

/** The first fenced block of `language` after the heading `## <title>` in the README. */
function readmeBlock(title: string, language: string): string {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf(`\n## ${title}\n`));
  const match = section.match(new RegExp("```" + language + "\\n([\\s\\S]*?)```"));
  if (!match) throw new Error(`no ${language} block under "## ${title}" in README.md`);
  return match[1];
}

/** `key = value` lines of a main.cf block. */
function mainCf(block: string): Record<string, string> {
  return Object.fromEntries(
    block.split("\n").filter((l) => l.includes("=")).map((l) => l.split("=").map((s) => s.trim()) as [string, string]),
  );
}

test("the quick-start filter, run as the README says, behind Postfix with the README's lines", async () => {
  const port = await freePort();
  const code = readmeBlock("Quick start", "ts");
  expect(code).toContain('Milter.setconn("inet:8890@127.0.0.1")');
  expect(readmeBlock("Quick start", "sh")).toContain("npx tsx milter.mts");
  const file = join(dir, "milter.mts");
  writeFileSync(
    file,
    code.replace('"@milterjs/milter"', JSON.stringify(pathToFileURL(join(ROOT, "mod.ts")).href))
      .replace("inet:8890@127.0.0.1", `inet:${port}@127.0.0.1`),
  );
  const filter = spawn(process.execPath, ["--import", "tsx", file], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  filter.stderr!.on("data", (t) => (stderr += t));
  try {
    await waitListening(`inet:${port}@127.0.0.1`, () => filter.exitCode !== null ? stderr : null);
    const settings = mainCf(readmeBlock("Use with Postfix", ""));
    expect(settings.smtpd_milters).toBe("inet:127.0.0.1:8890");
    const postfix = await PrivatePostfix.start(settings.smtpd_milters.replace("8890", String(port)), {
      milter_default_action: settings.milter_default_action,
      milter_protocol: settings.milter_protocol,
    });
    const tx = await send(postfix.smtpPort, {
      from: "alice@example.org",
      to: ["bob@example.net", "spam@example.net"],
      content: "Subject: readme\r\nFrom: alice@example.org\r\nTo: bob@example.net\r\n\r\nHello.\r\n",
    });
    expect(tx.rcpt.map((r) => r.lines.join("\n"))).toEqual(["250 2.1.5 Ok", "550 5.7.1 no such user here"]);
    expect(tx.end?.code).toBe(250);
    const delivered = await postfix.waitForDelivery((d) =>
      d.headers.some(([n, v]) => n === "Subject" && v === "readme")
    );
    expect(delivered.rcptTo).toEqual(["bob@example.net"]);
    const stamp = delivered.headers.find(([n]) => n === "X-Stamped")?.[1];
    expect(stamp).toMatch(/^yes, queue id [0-9A-Z]+$/); // Postfix sends the queue id macro i by default
  } finally {
    filter.kill("SIGTERM");
  }
}, 120_000);
