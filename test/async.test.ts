/**
 * Async callbacks: a callback may answer with a Promise, and only its own
 * connection waits. The Ctx is usable across awaits until the Promise
 * settles and not after; a rejection, a bad resolved value or a Promise
 * still pending at callbackTimeout answers 451 4.3.0 and is reported; stop
 * drains pending callbacks.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { MilterClient } from "../src/testing/mod.ts";
import { FAILED_REPLY, type FilterProcess, killAll, MESSAGE, script, startFilter } from "./helpers/filter.ts";
import { type Runtime, RUNTIMES, runtimeVersion } from "./helpers/runtimes.ts";

afterAll(killAll);

const ALL_FLAGS = "ADDHDRS,CHGHDRS,CHGBODY,ADDRCPT,ADDRCPT_PAR,DELRCPT,QUARANTINE,CHGFROM";

describe.each(RUNTIMES)("under %s", (runtime: Runtime) => {
  let filter: FilterProcess;
  beforeAll(async () => {
    runtimeVersion(runtime);
    filter = await startFilter({ runtime, env: { FLAGS: ALL_FLAGS, CALLBACK_TIMEOUT: "30" } });
  });

  test("every action after an await at end of message", async () => {
    const client = await filter.client();
    await client.connect("after-await.example", null);
    const result = await client.message({ ...MESSAGE, headers: [["Subject", "hi"], ["X-Old", "1"]] }, {
      envfrom: script({
        envrcpt: { awaitMs: 20 },
        eom: {
          awaitMs: 20,
          actions: [
            ["addheader", "X-Added", "yes"],
            ["chgheader", "X-Old", 1, "2"],
            ["insheader", 0, "X-First", "top"],
            ["chgfrom", "<new@example.org>", null],
            ["addrcpt", "<c@example.net>"],
            ["addrcpt_par", "<d@example.net>", "NOTIFY=NEVER"],
            ["delrcpt", "<b@example.net>"],
            ["replacebody", "new body\r\n"],
            ["quarantine", "held after an await"],
          ],
        },
      }),
    });
    client.quit();
    expect(result.reply).toEqual({ action: "continue" });
    expect(result.modifications.map((m) => m.type)).toEqual([
      "addheader",
      "chgheader",
      "insheader",
      "chgfrom",
      "addrcpt",
      "addrcpt_par",
      "delrcpt",
      "replacebody",
      "quarantine",
    ]);
    expect(new TextDecoder().decode(result.body!)).toBe("new body\r\n");
  });

  test("Reject with a reply set after an await", async () => {
    const client = await filter.client();
    await client.connect("reject-await.example", null);
    await client.envfrom(
      "<a@example.org>",
      [],
      script({
        envrcpt: { awaitMs: 10, stat: "Reject", reply: ["550", "5.7.1", "listed after a lookup"] },
      }),
    );
    expect(await client.envrcpt("<b@example.net>")).toEqual({
      action: "replycode",
      smtpCode: 550,
      text: "550 5.7.1 listed after a lookup",
    });
    client.quit();
  });

  test("64 connections pending at once: each waits only for itself", async () => {
    // One at a time, each connection's envrcpt goes pending (its barrier
    // arrival is seen) before the next one's is sent; the barrier lets all
    // of them go only once the 64th is pending too. Sent as one burst
    // instead, libmilter's worker pool may queue some connections behind
    // the workers that wait (see README, "How it behaves").
    const replies: Promise<unknown>[] = [];
    const clients: MilterClient[] = [];
    for (let i = 0; i < 64; i++) {
      const client = await filter.client({ timeout: 30_000 });
      clients.push(client);
      await client.connect(`barrier-${i}.example`, null);
      await client.envfrom("<a@example.org>", [], script({ envrcpt: { barrier: 64 } }));
      replies.push(client.envrcpt("<b@example.net>"));
      const ctx = await filter.ctxOf(`barrier-${i}.example`);
      await filter.waitFor((e) => e.event === "barrier" && e.ctx === ctx);
    }
    expect(await Promise.all(replies)).toEqual(Array.from({ length: 64 }, () => ({ action: "continue" })));
    for (const client of clients) client.quit();
    expect(filter.events.filter((e) => e.event === "barrier").map((e) => e.arrived)).toEqual(
      Array.from({ length: 64 }, (_, i) => i + 1),
    );
  });
});

describe("failures and deadlines", () => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await startFilter({ env: { CALLBACK_TIMEOUT: "1" } });
  });

  async function rcptWith(host: string, instruction: unknown): Promise<unknown> {
    const client = await filter.client();
    await client.connect(host, null);
    await client.envfrom("<a@example.org>", [], script({ envrcpt: instruction }));
    const reply = await client.envrcpt("<b@example.net>");
    client.quit();
    return reply;
  }

  test("a rejected Promise answers 451 and is reported while its Ctx is usable", async () => {
    expect(await rcptWith("rejects.example", { awaitMs: 5, reject: "lookup failed" })).toEqual(FAILED_REPLY);
    const reported = await filter.waitFor((e) => e.event === "reported" && e.message === "lookup failed");
    expect(reported).toMatchObject({ cb: "envrcpt", kind: "exception", macro: { ok: true } });
  });

  test("a Promise of something that is not a Stat is a bad return", async () => {
    expect(await rcptWith("bad-value.example", { awaitMs: 5, stat: "continue" })).toEqual(FAILED_REPLY);
    await filter.waitFor((e) => e.event === "reported" && e.kind === "bad-return" && e.message.includes('"continue"'));
  });

  test("a Promise that never settles: 451 at callbackTimeout; the Ctx is dead afterwards", async () => {
    const started = Date.now();
    expect(await rcptWith("never.example", { never: true, lateMs: 1500 })).toEqual(FAILED_REPLY);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    const reported = await filter.waitFor((e) => e.event === "reported" && e.kind === "timeout");
    expect(reported.message).toContain("did not settle within callbackTimeout (1 s)");
    const late = await filter.waitFor((e) => e.event === "late");
    expect(late.result).toMatchObject({ ok: false, name: "MilterError" });
    expect(late.result.message).toMatch(/outside its callbacks|belongs to a connection that has closed/);
  });

  test("async negotiate, abort and close", async () => {
    const negotiating = await startFilter({
      env: { FLAGS: "ADDHDRS", NEGOTIATE: JSON.stringify({ async: true, result: ["Continue", ["ADDHDRS"], []] }) },
    });
    const client = await negotiating.client();
    expect(client.negotiated.actionMask).toBe(1);
    await client.connect("async-close.example", null, script({ abort: { awaitMs: 5 }, close: { awaitMs: 5 } }));
    await client.envfrom("<a@example.org>");
    client.abort();
    client.quit();
    const ctx = await negotiating.ctxOf("async-close.example");
    await negotiating.waitFor((e) => e.cb === "close" && e.ctx === ctx);
    expect(negotiating.eventsOf(ctx).map((e) => e.cb)).toEqual(["negotiate", "connect", "envfrom", "abort", "close"]);
  });
});

describe("stopping with Promises pending", () => {
  test("SIGTERM drains a pending callback, which then answers", async () => {
    const filter = await startFilter({ env: { DRAIN: "10" } });
    const client = await filter.client();
    await client.connect("drained.example", null);
    await client.envfrom("<a@example.org>", [], script({ envrcpt: { awaitMs: 700, stat: "Reject" } }));
    const reply = client.envrcpt("<b@example.net>");
    await filter.waitFor((e) => e.cb === "envfrom");
    filter.child.kill("SIGTERM");
    expect(await reply).toEqual({ action: "reject" });
    client.quit();
    expect(await filter.exited).toEqual({ code: 0, signal: null });
  });

  test("past the drain timeout, a Promise still pending answers 451 and the filter exits", async () => {
    const filter = await startFilter({ env: { DRAIN: "1", CALLBACK_TIMEOUT: "60" } });
    const client = await MilterClient.open(filter.spec, { timeout: 20_000 });
    await client.connect("stuck.example", null);
    await client.envfrom("<a@example.org>", [], script({ envrcpt: { never: true } }));
    const reply = client.envrcpt("<b@example.net>");
    await filter.waitFor((e) => e.event === "pending");
    filter.child.kill("SIGTERM");
    expect(await reply).toEqual(FAILED_REPLY);
    expect(await filter.exited).toEqual({ code: 0, signal: null });
    expect(filter.events.some((e) => e.event === "reported" && e.kind === "timeout")).toBe(true);
  });
});
