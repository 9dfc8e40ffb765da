/**
 * Findings of the hostile review that are not about no-reply stages (see
 * noreply.test.ts) or process exit (see exit.test.ts): a filter written as a
 * class, an unbounded drain, a socket file another instance owns, an
 * uninspectable thrown value, and header names and values that would inject
 * headers.
 */

import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { MilterClient } from "../src/testing/mod.ts";
import { FAILED_REPLY, type FilterProcess, killAll, MESSAGE, script, startFilter } from "./helpers/filter.ts";
import { type Runtime, RUNTIMES, runtimeVersion } from "./helpers/runtimes.ts";

afterAll(killAll);
const REPLY = FAILED_REPLY;

describe.each(RUNTIMES)("a filter written as a class, under %s", (runtime: Runtime) => {
  let filter: FilterProcess;
  beforeAll(async () => {
    runtimeVersion(runtime);
    filter = await startFilter({ runtime, fixture: "class-filter.ts" });
  });

  test("its prototype methods see `this`, and its non-enumerable eom runs", async () => {
    const client = await filter.client();
    await client.connect("class.example", null);
    await client.envfrom("<a@example.org>");
    expect(await client.envrcpt("<spam@example.net>")).toEqual({ action: "reject" });
    client.abort();
    const spam = await client.message({ ...MESSAGE, headers: [["Subject", "spam"]] });
    expect(spam.reply).toEqual({ action: "reject" });
    const ham = await client.message(MESSAGE);
    expect(ham.reply).toEqual({ action: "continue" });
    client.quit();
  });
});

test("drainTimeout Infinity waits for the message in flight", async () => {
  const filter = await startFilter({ env: { DRAIN: "Infinity" } });
  const client = await filter.client();
  await client.connect("client.example", null);
  await client.envfrom("<a@example.org>");
  await client.envrcpt("<b@example.net>");
  filter.child.kill("SIGTERM");
  // Draining shows: a new connection is refused at its first callback.
  await expect.poll(async () => {
    const late = await MilterClient.open(filter.spec, { timeout: 5000 });
    const reply = await late.connect("late.example", null);
    late.quit();
    return reply.action;
  }, { timeout: 5000 }).toBe("tempfail");
  await client.data();
  await client.eoh();
  await client.body("still flowing\r\n");
  expect((await client.eom()).reply).toEqual({ action: "continue" });
  client.quit();
  expect(await filter.exited).toEqual({ code: 0, signal: null });
});

test("at exit a filter removes only its own socket file, not the one a newer instance made", async () => {
  const path = join(mkdtempSync(join(tmpdir(), "milter-owner-")), "milter.sock");
  const spec = `unix:${path}`;
  const old = await startFilter({ env: { SOCKET: spec } });
  const newer = await startFilter({ env: { SOCKET: spec } }); // opensocket(true) replaces the file
  expect(await old.signal("SIGTERM")).toEqual({ code: 0, signal: null });
  expect(existsSync(path)).toBe(true);
  const client = await MilterClient.open(spec, { timeout: 5000 });
  expect(await client.connect("newer.example", null)).toEqual({ action: "continue" });
  client.quit();
  await newer.waitFor((e) => e.cb === "connect" && e.args[0] === "newer.example");
  expect(await newer.signal("SIGTERM")).toEqual({ code: 0, signal: null });
  expect(existsSync(path)).toBe(false);
});

describe("the scripted filter", () => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await startFilter({ env: { FLAGS: "ADDHDRS,CHGHDRS", REPORTER: "default" } });
  });

  test("a thrown revoked Proxy answers 451 4.3.0 and is reported", async () => {
    const client = await filter.client();
    await client.connect("revoked.example", null);
    await client.envfrom("<a@example.org>", [], script({ envrcpt: { throwRevoked: true } }));
    expect(await client.envrcpt("<b@example.net>")).toEqual(REPLY);
    client.quit();
    await expect.poll(() => filter.stderr, { timeout: 5000 }).toContain("(an uninspectable value was thrown)");
    expect(filter.stderr).toContain("envrcpt callback failed (exception)");
  });

  test.each([
    [["addheader", "X-A", "v\r\nBcc: evil@example.net"], "line break that does not fold it"],
    [["addheader", "X-A", "v\nBcc: evil@example.net"], "line break that does not fold it"],
    [["addheader", "X-A", "v\rw"], "line break that does not fold it"],
    [["addheader", "Bcc: x\r\nX-A", "v"], "must be printable US-ASCII without"],
    [["addheader", "X A", "v"], "must be printable US-ASCII without"],
    [["addheader", "", "v"], "must be printable US-ASCII without"],
    [["insheader", 0, "X:A", "v"], "must be printable US-ASCII without"],
    [["chgheader", "Subject", 1, "v\n.\r\n"], "line break that does not fold it"],
    [["addheader", "X-Big", { repeat: "v", times: 1 << 20 }], "more than libmilter sends in one command (65535"],
  ])("%j is refused", async (action, why) => {
    const client = await filter.client();
    await client.connect("headers.example", null);
    const result = await client.message(MESSAGE, { envfrom: script({ eom: { actions: [action] } }) });
    expect(result.modifications).toEqual([]);
    client.quit();
    const ctx = await filter.ctxOf("headers.example");
    const eom = await filter.waitFor((e) => e.cb === "eom" && e.ctx === ctx);
    expect(eom.actions[0]).toMatchObject({ ok: false, name: "MilterError" });
    expect(eom.actions[0].message).toContain(why);
    filter.events.length = 0;
  });

  test("a folded value and an 8-bit value pass", async () => {
    const client = await filter.client();
    await client.connect("folded.example", null);
    const result = await client.message(MESSAGE, {
      envfrom: script({ eom: { actions: [["addheader", "X-A", "one\r\n\ttwo"], ["addheader", "X-B", "é\n two"]] } }),
    });
    expect(result.modifications).toEqual([
      { type: "addheader", name: "X-A", value: "one\r\n\ttwo" },
      { type: "addheader", name: "X-B", value: "é\n two" },
    ]);
    client.quit();
  });
});
