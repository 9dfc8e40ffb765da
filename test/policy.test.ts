/**
 * The failure policy: a callback that throws or answers something that is
 * not a valid Stat never lets mail through. It answers Tempfail with an
 * explicit 451 4.3.0 reply and is reported, and the filter keeps serving.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { MilterClient } from "../src/testing/mod.ts";
import { type FilterProcess, killAll, NO_SHIM, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);
const REPLY = { action: "replycode", text: "451 4.3.0 mail filter scripted failed; try again later", smtpCode: 451 };

describe("with a reporter installed by the program", () => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await startFilter();
  });

  async function rcptWith(instruction: unknown): Promise<unknown> {
    const client = await filter.client();
    await client.connect("client.example", null);
    await client.envfrom("<a@example.org>", [], script({ envrcpt: instruction }));
    const reply = await client.envrcpt("<b@example.net>");
    client.quit();
    return reply;
  }

  test("a thrown exception answers 451 4.3.0 and is reported", async () => {
    expect(await rcptWith({ throw: "database is down" })).toEqual(REPLY);
    const reported = await filter.waitFor((e) => e.event === "reported" && e.message === "database is down");
    expect(reported).toMatchObject({ cb: "envrcpt", kind: "exception", filter: "scripted" });
  });

  test.each([
    [42, "number 42"],
    ["continue", '"continue"'],
    [null, "null"],
    ["All", '"All"'],
    [["Continue"], "an array"],
  ])("answering %j is a bad return, answered 451 4.3.0", async (stat, described) => {
    expect(await rcptWith({ stat })).toEqual(REPLY);
    const reported = await filter.waitFor((e) =>
      e.event === "reported" && e.message.includes(`returned ${described},`)
    );
    expect(reported).toMatchObject({ cb: "envrcpt", kind: "bad-return" });
    expect(reported.message).toBe(`the envrcpt callback returned ${described}, not a Stat`);
  });

  // One test in both projects of vitest.config.ts: with the shim (see async.test.ts) and without it.
  test("a Promise answer is awaited; without the shim it fails with 451, naming what is missing", async () => {
    if (!NO_SHIM) {
      expect(await rcptWith({ stat: "Reject", promise: true })).toEqual({ action: "reject" });
      return;
    }
    expect(await rcptWith({ stat: "Reject", promise: true })).toEqual(REPLY);
    const reported = await filter.waitFor((e) => e.event === "reported" && e.message.includes("needs the native shim"));
    expect(reported).toMatchObject({ cb: "envrcpt", kind: "bad-return" });
    expect(reported.message).toMatch(/cannot load the milter shim .*no-shim.*check MILTER_SHIM_PATH/);
  });

  test("failures at every stage tempfail, and the filter keeps serving", async () => {
    const client = await filter.client();
    expect(await client.connect("client.example", null, script({ helo: { throw: "helo" } }))).toEqual({
      action: "continue",
    });
    expect(await client.helo("x")).toEqual(REPLY);
    const result = await client.message({
      from: "<a@example.org>",
      rcpt: ["<b@example.net>"],
      headers: [["Subject", "s"]],
      body: "b",
    }, { envfrom: script({ eom: { throw: "eom" } }) });
    expect(result.reply).toEqual(REPLY);
    client.quit();
    expect(await rcptWith({})).toEqual({ action: "continue" });
  });

  test("a failing close or abort is reported; the connection still ends cleanly", async () => {
    const client = await filter.client();
    await client.connect("closing.example", null, script({ close: { throw: "close failed" }, abort: { stat: 7 } }));
    await client.envfrom("<a@example.org>");
    client.abort();
    client.quit();
    await filter.waitFor((e) => e.event === "reported" && e.message === "close failed");
    await filter.waitFor((e) => e.event === "reported" && e.cb === "abort" && e.kind === "bad-return");
    expect(await rcptWith({})).toEqual({ action: "continue" });
  });
});

test("a throwing negotiate refuses the connection", async () => {
  const filter = await startFilter({ env: { NEGOTIATE: JSON.stringify({ throw: "no options" }) } });
  await expect(MilterClient.open(filter.spec, { timeout: 5000 })).rejects.toThrow(/closed/);
  await filter.waitFor((e) => e.event === "reported" && e.cb === "negotiate" && e.message === "no options");
});

test("the default reporter writes the callback, the filter and the stack to stderr", async () => {
  const filter = await startFilter({ env: { REPORTER: "default", NAME: "100% pure" } });
  const client = await filter.client();
  await client.connect("client.example", null);
  await client.envfrom("<a@example.org>", [], script({ envrcpt: { throw: "kaboom" } }));
  // A % in the filter name is escaped so that libmilter keeps the reply text.
  expect(await client.envrcpt("<b@example.net>")).toEqual({
    ...REPLY,
    text: "451 4.3.0 mail filter 100%% pure failed; try again later",
  });
  client.quit();
  await expect.poll(() => filter.stderr, { timeout: 5000 }).toContain("kaboom");
  expect(filter.stderr).toMatch(
    /milter "100% pure": envrcpt callback failed \(exception\) on Milter\.Ctx#\d+; answered Tempfail\nError: kaboom\n\s+at /,
  );
});
