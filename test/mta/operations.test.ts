/**
 * Running in production behind a real Postfix, under Node, Deno and Bun:
 * each log line's queue id is the one Postfix gives the message (its SMTP
 * reply, or its log for a message the filter refused), and the metrics
 * endpoint counts what Postfix sent, in a form promtool accepts.
 */

import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "vitest";
import { freePort, killAll, startFilter } from "../helpers/filter.ts";
import { RUNTIMES } from "../helpers/runtimes.ts";
import { postfixMilterSpec, PrivatePostfix, stopAllPostfix } from "./postfix.ts";
import { send } from "./smtp.ts";

afterAll(async () => {
  await stopAllPostfix();
  await killAll();
});

/** The value of the sample `name{…labels…}` in exposition text. */
function sample(text: string, name: string, labels: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
}

describe.each(RUNTIMES)("under %s", (runtime) => {
  test("log lines carry Postfix's queue ids, and the metrics count what Postfix sent", async () => {
    const rules = join(mkdtempSync(join(tmpdir(), "milter-rules-")), "rules.json");
    writeFileSync(rules, JSON.stringify({ tag: "P", reject: "spam" }));
    const port = await freePort();
    const filter = await startFilter({
      runtime,
      socket: "inet",
      fixture: "operations.ts",
      env: { RULES: rules, LOG: "fn", METRICS: `inet:${port}@127.0.0.1` },
    });
    const postfix = await PrivatePostfix.start(postfixMilterSpec(filter.spec));
    const content = (subject: string): string => `Subject: ${subject}\r\nFrom: alice@example.org\r\n\r\nHello.\r\n`;
    const queuedAs = (reply: { lines: string[] } | null): string => /queued as (\w+)/.exec(reply!.lines.join(" "))![1];

    const accepted = await send(postfix.smtpPort, {
      from: "alice@example.org",
      to: ["bob@example.net", "carol@example.net"],
      content: content("accepted"),
    });
    const partly = await send(postfix.smtpPort, {
      from: "alice@example.org",
      to: ["spam@example.net", "bob@example.net"],
      content: content("partly"),
    });
    expect(partly.rcpt.map((r) => r.code)).toEqual([550, 250]);
    const refused = await send(postfix.smtpPort, {
      from: "alice@example.org",
      to: ["r@example.net"],
      content: content("refused"),
    });
    expect(refused.end?.code).toBe(550);
    await expect.poll(() => postfix.maillog(), { timeout: 10_000 }).toMatch(/(\w+): milter-reject: END-OF-MESSAGE/);
    const refusedId = /(\w+): milter-reject: END-OF-MESSAGE/.exec(postfix.maillog())![1];

    await expect.poll(() => filter.events.filter((e) => e.event === "log" && e.kind === "message").length, {
      timeout: 10_000,
    }).toBe(3);
    const entries = filter.events.filter((e) => e.event === "log" && e.kind === "message");
    expect(entries.map((e) => [e.queueId, e.verdict, e.stage, e.recipients, e.sender, e.client])).toEqual([
      [queuedAs(accepted.end), "continue", "eom", 2, "<alice@example.org>", "127.0.0.1"],
      [queuedAs(partly.end), "continue", "eom", 2, "<alice@example.org>", "127.0.0.1"],
      [refusedId, "reject", "eom", 1, "<alice@example.org>", "127.0.0.1"],
    ]);
    expect(entries[2].reply).toBe("550 5.7.1 refused by rules");

    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    execFileSync("/usr/bin/promtool", ["check", "metrics"], { input: text, stdio: ["pipe", "pipe", "pipe"] });
    expect(sample(text, "milter_messages_total", 'filter="rules"')).toBe(3);
    expect(sample(text, "milter_verdicts_total", 'stage="envrcpt",verdict="reject"')).toBe(1);
    expect(sample(text, "milter_verdicts_total", 'stage="envrcpt",verdict="continue"')).toBe(4);
    expect(sample(text, "milter_verdicts_total", 'stage="eom",verdict="reject"')).toBe(1);
    expect(sample(text, "milter_verdicts_total", 'stage="eom",verdict="continue"')).toBe(2);
    // Besides the three sessions, any Postfix made without a message (its start-up probe) has a line of its own.
    const idle = filter.events.filter((e) => e.event === "log" && e.kind === "connection").length;
    expect(sample(text, "milter_connections_total", 'filter="rules"')).toBe(3 + idle);
    await postfix.stop();
    await filter.kill();
  });
});
