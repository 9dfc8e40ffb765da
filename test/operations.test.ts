/**
 * Running a filter in production, under Node, Deno and Bun: the figures
 * (`Milter.stats()`, `Milter.metrics()` served by `main({ metrics })`,
 * checked with `promtool check metrics` and against the traffic sent), one
 * log entry per message (`main({ log })`), and new rules without a restart
 * (`Milter.replace` through `main({ reload })` on SIGHUP).
 */

import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, test } from "vitest";
import { type FilterProcess, freePort, startFilter } from "./helpers/filter.ts";
import { type Runtime, RUNTIMES } from "./helpers/runtimes.ts";
import type { MessageResult, MilterClient } from "../src/testing/mod.ts";

/** promtool, from Debian's prometheus package. */
const PROMTOOL = "/usr/bin/promtool";

const started: FilterProcess[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((f) => f.kill()));
});

/** A rules file for test/fixtures/operations.ts. */
function rulesFile(rules: Record<string, unknown>): string {
  const path = join(mkdtempSync(join(tmpdir(), "milter-rules-")), "rules.json");
  writeFileSync(path, JSON.stringify(rules));
  return path;
}

async function start(runtime: Runtime, env: Record<string, string>): Promise<FilterProcess> {
  const filter = await startFilter({ runtime, fixture: "operations.ts", env });
  started.push(filter);
  return filter;
}

/** The value of the sample `name{labels}` in exposition text, `undefined` when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const body = line.slice(name.length + 1, line.lastIndexOf("}"));
    const found = Object.fromEntries(
      [...body.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return undefined;
}

/** GET `path` on the metrics endpoint; polls until it answers (the server starts with main). */
async function scrape(port: number, path = "/metrics"): Promise<{ status: number; type: string | null; text: string }> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}${path}`);
      return { status: response.status, type: response.headers.get("content-type"), text: await response.text() };
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** One message through `client`, the queue id `qid` sent with eom as Postfix does. */
function send(client: MilterClient, qid: string, rcpt: string[]): Promise<MessageResult> {
  return client.message(
    { from: "<sender@example.org>", rcpt, headers: [["Subject", "hello"]], body: "hi\r\n" },
    // As Postfix sends them: the sender with MAIL, the queue id from the first recipient on.
    { envfrom: { "{mail_addr}": "sender@example.org" }, envrcpt: { i: qid }, eom: { i: qid } },
  );
}

describe.each(RUNTIMES)("under %s", (runtime) => {
  test("metrics: promtool accepts them, and the counters are the traffic sent", async () => {
    const port = await freePort();
    const filter = await start(runtime, {
      RULES: rulesFile({ tag: "A", reject: "spam", quarantine: true }),
      METRICS: `inet:${port}@127.0.0.1`,
    });
    expect((await scrape(port)).status).toBe(200);
    const client = await filter.client();
    await client.connect("client.example", null);
    for (let i = 0; i < 5; i++) await send(client, `Q${i}`, ["<a@example.net>", "<spam@example.net>"]);
    await send(client, "Q5", ["<q@example.net>"]);
    const failed = await send(client, "Q6", ["<boom@example.net>"]);
    expect(failed.reply).toMatchObject({ smtpCode: 451 });
    client.quit();
    await client.closed();
    const refusedLater = await filter.client();
    await refusedLater.connect("idle.example", null);
    refusedLater.quit();
    await refusedLater.closed();

    const { text, type } = await scrape(port);
    expect(type).toBe("text/plain; version=0.0.4; charset=utf-8");
    // promtool reads the exposition from stdin and exits non-zero on any problem (lint included).
    execFileSync(PROMTOOL, ["check", "metrics"], { input: text, stdio: ["pipe", "pipe", "pipe"] });
    const f = { filter: "rules" };
    expect(sample(text, "milter_connections_total", f)).toBe(2);
    expect(sample(text, "milter_messages_total", f)).toBe(6);
    expect(sample(text, "milter_verdicts_total", { ...f, stage: "envrcpt", verdict: "reject" })).toBe(5);
    expect(sample(text, "milter_verdicts_total", { ...f, stage: "envrcpt", verdict: "continue" })).toBe(6);
    expect(sample(text, "milter_verdicts_total", { ...f, stage: "eom", verdict: "continue" })).toBe(5);
    expect(sample(text, "milter_verdicts_total", { ...f, stage: "eom", verdict: "quarantine" })).toBe(1);
    expect(sample(text, "milter_failures_total", { ...f, stage: "envrcpt", kind: "exception" })).toBe(1);
    expect(sample(text, "milter_callback_duration_seconds_count", { ...f, stage: "envrcpt" })).toBe(12);
    expect(sample(text, "milter_callback_duration_seconds_bucket", { ...f, stage: "eom", le: "+Inf" })).toBe(6);
    await expect.poll(async () => sample((await scrape(port)).text, "milter_connections_open", f)).toBe(0);
    expect(sample(text, "milter_callbacks_pending", f)).toBe(0);
    expect((await scrape(port, "/")).status).toBe(404);
    expect((await scrape(port, "/metrics/x")).status).toBe(404);

    // Milter.stats() in the program gives the same figures, as a typed object; the endpoint closes with main.
    await filter.signal("SIGTERM");
    const { stats } = await filter.waitFor((e) => e.event === "stats");
    expect(stats.messages.total).toBe(6);
    expect(stats.verdicts.envrcpt).toEqual({ continue: 6, reject: 5 });
    expect(stats.failures).toEqual({ envrcpt: { exception: 1 } });
    await expect(fetch(`http://127.0.0.1:${port}/metrics`)).rejects.toThrow();
  });

  test("a metrics socket that cannot be opened stops the filter, and main says why", async () => {
    const port = await freePort();
    const holder = await start(runtime, { RULES: rulesFile({ tag: "A" }), METRICS: `inet:${port}@127.0.0.1` });
    await scrape(port);
    const filter = await startFilter({
      runtime,
      fixture: "operations.ts",
      env: { RULES: rulesFile({ tag: "B" }), METRICS: `inet:${port}@127.0.0.1` },
    });
    started.push(filter);
    const failed = await filter.waitFor((e) => e.event === "failed");
    expect(failed.message).toMatch(
      /^Milter\.main: cannot serve metrics on inet:\d+@127\.0\.0\.1: .*(EADDRINUSE|in use)/,
    );
    expect(await filter.exited).toEqual({ code: 3, signal: null });
    expect((await scrape(port)).status).toBe(200); // the first one serves on
    void holder;
  });

  test("one log entry per message, and one for a connection without any", async () => {
    const filter = await start(runtime, {
      RULES: rulesFile({ tag: "A", reject: "spam", quarantine: true }),
      LOG: "fn",
    });
    const client = await filter.client();
    // Postfix and Sendmail send the macro `_` at connect: the client's name and [address].
    await client.connect("client.example", null, { _: "client.example [192.0.2.7]" });
    await send(client, "QA", ["<a@example.net>", "<spam@example.net>", "<b@example.net>"]);
    await send(client, "QB", ["<q@example.net>"]);
    await send(client, "QC", ["<boom@example.net>"]);
    await client.envfrom("<aborted@example.org>", [], { "{mail_addr}": "aborted@example.org" });
    await client.envrcpt("<a@example.net>", [], { i: "QD" });
    client.abort();
    await send(client, "QE", ["<a@example.net>"]);
    client.quit();
    await client.closed();
    const idle = await filter.client();
    await idle.connect("idle.example", null, { "{client_addr}": "198.51.100.9" });
    idle.quit();
    await idle.closed();
    await filter.waitFor((e) => e.event === "log" && e.kind === "connection");
    const entries = filter.events.filter((e) => e.event === "log");
    expect(entries.map((e) => [e.queueId, e.kind, e.verdict, e.stage, e.recipients])).toEqual([
      ["QA", "message", "continue", "eom", 3],
      ["QB", "message", "quarantine", "eom", 1],
      ["QC", "message", "aborted", null, 1],
      ["QD", "message", "aborted", null, 1],
      ["QE", "message", "continue", "eom", 1],
      [null, "connection", "continue", null, 0],
    ]);
    expect(entries[0]).toMatchObject({ filter: "rules", sender: "<sender@example.org>", client: "192.0.2.7" });
    expect(entries[1]).toMatchObject({ quarantine: "held by rules" });
    expect(entries[3]).toMatchObject({ sender: "<aborted@example.org>" });
    expect(entries[5]).toMatchObject({ client: "198.51.100.9" });
    for (const entry of entries) expect(entry.duration).toBeGreaterThanOrEqual(0);
  });

  test("log: text writes logfmt lines on stderr, json one object per line; nothing by default", async () => {
    for (const log of ["text", "json", ""]) {
      const filter = await start(runtime, { RULES: rulesFile({ tag: "A", reject: "spam" }), LOG: log });
      const client = await filter.client();
      await client.connect("client.example", null);
      await send(client, "QT1", ["<spam@example.net>", "<a@example.net>"]);
      client.quit();
      await client.closed();
      await filter.kill();
      const lines = filter.stderr.split("\n").filter((line) => line.includes("QT1"));
      if (log === "") expect(filter.stderr).not.toMatch(/queue_id|queueId/);
      else if (log === "text") {
        expect(lines).toEqual([
          expect.stringMatching(
            /^milter=message filter=rules queue_id=QT1 from=<sender@example\.org> rcpts=2 verdict=continue stage=eom duration=\d+\.\d{6} conn=1$/,
          ),
        ]);
      } else {
        expect(lines).toHaveLength(1);
        expect(JSON.parse(lines[0])).toMatchObject({ queueId: "QT1", recipients: 2, verdict: "continue" });
      }
    }
  });

  test("a message refused at end of message logs the reply the filter set; one failed, the binding's 451", async () => {
    const filter = await start(runtime, { RULES: rulesFile({ tag: "A", async: true }), LOG: "fn" });
    const client = await filter.client();
    await client.connect("client.example", null);
    await send(client, "QR", ["<r@example.net>"]);
    await client.envfrom("<s@example.org>", []);
    expect(await client.envrcpt("<boom@example.net>", [], { i: "QF" })).toMatchObject({ smtpCode: 451 });
    client.quit();
    await client.closed();
    await filter.waitFor((e) => e.event === "log" && e.queueId === "QF");
    const [refused, failed] = filter.events.filter((e) => e.event === "log");
    expect(refused).toMatchObject({
      queueId: "QR",
      verdict: "reject",
      stage: "eom",
      reply: "550 5.7.1 refused by rules",
    });
    // A recipient's failure is that recipient's: the message, left without one, ends aborted.
    expect(failed).toMatchObject({ queueId: "QF", verdict: "aborted", recipients: 1 });
  });

  test("SIGHUP reloads: new connections use the new rules, an open one finishes on its own", async () => {
    const rules = rulesFile({ tag: "A", reject: "spam" });
    const filter = await start(runtime, { RULES: rules, RELOAD: "1" });
    const open = await filter.client();
    await open.connect("before.example", null);
    writeFileSync(rules, JSON.stringify({ tag: "B", reject: "ham", helo: true, quarantine: true }));
    filter.child.kill("SIGHUP");
    await expect.poll(() => filter.stderr, { timeout: 10_000 }).toContain("reloaded on SIGHUP");
    const after = await filter.client();
    await after.connect("after.example", null);
    expect(await after.helo("bad.example")).toMatchObject({ action: "reject" }); // a callback the first filter lacked
    const fresh = await filter.client();
    await fresh.connect("after2.example", null);
    const onNew = await send(fresh, "Q2", ["<ham@example.net>", "<q@example.net>"]);
    expect(onNew.replies.find((r) => r.stage === "envrcpt")!.reply).toMatchObject({ smtpCode: 550 });
    expect(onNew.modifications).toEqual([
      { type: "addheader", name: "X-Rules", value: "B/B" },
      { type: "quarantine", reason: "held by rules" },
    ]);
    const onOld = await send(open, "Q1", ["<ham@example.net>", "<spam@example.net>"]);
    expect(onOld.replies.filter((r) => r.stage === "envrcpt").map((r) => r.reply.action)).toEqual([
      "continue",
      "replycode",
    ]);
    expect(onOld.modifications).toEqual([{ type: "addheader", name: "X-Rules", value: "A/A" }]);
    for (const c of [open, after, fresh]) c.quit();
  });

  test("4,000 messages with a reload every 100 ms: none lost or tempfailed, none answered by two filters", async () => {
    const rules = rulesFile({ tag: "R0" });
    const filter = await start(runtime, { RULES: rules, RELOAD: "1" });
    let reloads = 0;
    const timer = setInterval(() => {
      writeFileSync(rules, JSON.stringify({ tag: `R${++reloads}`, async: reloads % 2 === 1 }));
      filter.child.kill("SIGHUP");
    }, 100);
    const seen = new Set<string>();
    const worker = async (w: number): Promise<number> => {
      let answered = 0;
      for (let c = 0; c < 10; c++) {
        const client = await filter.client();
        await client.connect(`w${w}.example`, null);
        for (let m = 0; m < 10; m++) {
          const result = await send(client, `W${w}C${c}M${m}`, ["<a@example.net>"]);
          expect(result.reply).toEqual({ action: "continue" });
          const [header] = result.modifications as { value: string }[];
          const [atEom, atRcpt] = header.value.split("/");
          expect(atEom).toBe(atRcpt); // one filter, from envrcpt to eom
          seen.add(atEom);
          answered++;
        }
        client.quit();
      }
      return answered;
    };
    try {
      const counts = await Promise.all(Array.from({ length: 40 }, (_, w) => worker(w)));
      expect(counts.reduce((a, b) => a + b, 0)).toBe(4000);
    } finally {
      clearInterval(timer);
    }
    expect(reloads).toBeGreaterThan(5);
    expect(seen.size).toBeGreaterThan(1); // messages met more than one filter
    expect(filter.stderr).not.toContain("failed");
    expect(filter.child.exitCode).toBe(null);
    // With every connection closed, a reload forgets every filter replaced: none is kept for nothing. (Two, one
    // after the other: a connection's close may still be on its way at the first.)
    for (let i = 0; i < 2; i++) {
      const last = filter.stderr.split("reloaded on SIGHUP").length;
      filter.child.kill("SIGHUP");
      await expect.poll(() => filter.stderr.split("reloaded on SIGHUP").length, { timeout: 10_000 }).toBe(last + 1);
    }
    await filter.signal("SIGTERM");
    const { stats, retired } = await filter.waitFor((e) => e.event === "stats");
    expect(retired).toBe(0);
    // SIGHUPs during a reload make one more after it, not one each.
    expect(stats.reloads).toEqual({ ok: expect.any(Number), failed: 0 });
    expect(stats.reloads.ok).toBeGreaterThan(5);
    expect(stats.reloads.ok).toBeLessThanOrEqual(reloads + 2);
  });

  test("a reload that throws or returns no filter leaves the filter in place, and says so", async () => {
    const rules = rulesFile({ tag: "A" });
    const filter = await start(runtime, { RULES: rules, RELOAD: "1" });
    for (
      const [broken, why] of [[{ tag: "X", throw: true }, "rules X are broken"], [
        { tag: "Y", invalid: true },
        "Milter.replace: filter.name must be a string, got number 42",
      ]] as const
    ) {
      writeFileSync(rules, JSON.stringify(broken));
      filter.child.kill("SIGHUP");
      await expect.poll(() => filter.stderr, { timeout: 10_000 }).toContain(why);
      expect(filter.stderr).toContain("reload on SIGHUP failed; the filter in place stays");
      const client = await filter.client();
      await client.connect("c.example", null);
      expect((await send(client, "Q", ["<a@example.net>"])).modifications).toEqual([
        { type: "addheader", name: "X-Rules", value: "A/A" },
      ]);
      client.quit();
    }
    expect(filter.child.exitCode).toBe(null);
  });

  test("without reload, SIGHUP stops the filter as libmilter does", async () => {
    const filter = await start(runtime, { RULES: rulesFile({ tag: "A" }) });
    expect(await filter.signal("SIGHUP")).toEqual({ code: 0, signal: null });
    expect(filter.events.some((e) => e.event === "done")).toBe(true);
  });
});
