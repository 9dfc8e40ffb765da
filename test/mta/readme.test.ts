/**
 * A newcomer's path, followed literally: the README's quick-start filter
 * (the code block as written, saved as milter.mts, with only the package
 * import pointed at this checkout and the port made free), run with tsx as
 * the README says, behind a Postfix configured with the README's main.cf
 * lines.
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, test } from "vitest";
import { PrivatePostfix, stopAllPostfix } from "./postfix.ts";
import { readmeBlock, startQuickStart } from "./readme.ts";
import { send } from "./smtp.ts";

const dir = mkdtempSync(join(tmpdir(), "milter-readme-"));
afterAll(async () => {
  await stopAllPostfix();
  rmSync(dir, { recursive: true, force: true });
});

/** `key = value` lines of a main.cf block. */
function mainCf(block: string): Record<string, string> {
  return Object.fromEntries(
    block.split("\n").filter((l) => l.includes("=")).map((l) => l.split("=").map((s) => s.trim()) as [string, string]),
  );
}

test("the quick-start filter, run as the README says, behind Postfix with the README's lines", async () => {
  const code = readmeBlock("Quick start", "ts");
  expect(code).toContain('Milter.setconn("inet:8890@127.0.0.1")');
  expect(readmeBlock("Quick start", "sh")).toContain("npx tsx milter.mts");
  const filter = await startQuickStart(dir);
  const port = filter.port;
  try {
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
    filter.stop();
  }
}, 120_000);
