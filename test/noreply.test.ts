/**
 * No-reply stages (NR_*) and per-stage answers. A failure at a stage the MTA
 * expects no reply to is remembered and answered Tempfail 451 4.3.0 at the
 * next stage that replies, never lost (the message would pass unfiltered)
 * and never left unanswered (the MTA would wait for its timeout). `No_reply`
 * and `Skip` are refused where libmilter cannot honour them.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { MilterClient } from "../src/testing/mod.ts";
import { FAILED_REPLY, type FilterProcess, killAll, MESSAGE, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);
const REPLY = FAILED_REPLY;

/** A scripted filter that negotiates `steps`, without the callbacks in `omit`. */
function negotiating(steps: string[], omit: string): Promise<FilterProcess> {
  return startFilter({
    env: { FLAGS: "ADDHDRS", OMIT: omit, NEGOTIATE: JSON.stringify({ result: ["Continue", ["ADDHDRS"], steps] }) },
  });
}

async function open(filter: FilterProcess, host: string): Promise<MilterClient> {
  const client = await filter.client({ timeout: 5000 });
  await client.connect(host, null);
  return client;
}

describe("NR_HDR and NR_RCPT negotiated; envrcpt, header and eom present", () => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await negotiating(["NR_HDR", "NR_RCPT"], "eoh,body,data");
  });

  test("a header callback that throws: nothing is answered at the header, eom answers 451", async () => {
    const client = await open(filter, "hdr-throws.example");
    const result = await client.message(MESSAGE, { envfrom: script({ header: { throw: "header failed" } }) });
    expect(result.replies.find((r) => r.stage === "header")?.reply).toEqual({ action: "noreply" });
    expect(result.replies.at(-1)?.stage).toBe("eom");
    expect(result.reply).toEqual(REPLY);
    const ctx = await filter.ctxOf("hdr-throws.example");
    await filter.waitFor((e) => e.event === "reported" && e.ctx === ctx && e.cb === "header");
    // The failed message's eom callback never ran; the next message (with
    // macros that no longer ask header to throw) is the filter's again.
    const next = await client.message(MESSAGE, { envfrom: script({ header: {} }) });
    expect(next.reply).toEqual({ action: "continue" });
    // The eom event comes on the filter's stdout, the reply on its socket: wait for the event.
    await filter.waitFor((e) => e.cb === "eom" && e.ctx === ctx);
    expect(filter.eventsOf(ctx).filter((e) => e.cb === "eom")).toHaveLength(1);
    client.quit();
  });

  test("an envrcpt that throws lets no unchecked recipient through", async () => {
    const client = await open(filter, "rcpt-throws.example");
    const result = await client.message(MESSAGE, { envfrom: script({ envrcpt: { throw: "lookup failed" } }) });
    expect(result.replies.find((r) => r.stage === "envrcpt")?.reply).toEqual({ action: "noreply" });
    expect(result.reply).toEqual(REPLY);
    client.quit();
  });

  test.each([["Reject"], ["Tempfail"], ["Accept"], ["Discard"], ["Skip"]])(
    "%s from a no-reply stage is a bad return, answered at eom",
    async (stat) => {
      const client = await open(filter, `hdr-${stat}.example`);
      const result = await client.message(MESSAGE, { envfrom: script({ header: { stat } }) });
      expect(result.reply).toEqual(REPLY);
      const reported = await filter.waitFor((e) => e.event === "reported" && e.message.includes(`"${stat}"`));
      expect(reported).toMatchObject({ cb: "header", kind: "bad-return" });
      expect(reported.message).toContain("NR_HDR");
      client.quit();
    },
  );

  test.each([["Continue"], ["No_reply"]])("%s from a no-reply stage sends nothing and mail flows", async (stat) => {
    const client = await open(filter, `hdr-ok-${stat}.example`);
    const result = await client.message(MESSAGE, { envfrom: script({ header: { stat }, envrcpt: { stat } }) });
    expect(result.reply).toEqual({ action: "continue" });
    client.quit();
  });

  test("an aborted message forgets its failure", async () => {
    const client = await open(filter, "aborted.example");
    await client.envfrom("<a@example.org>", [], script({ envrcpt: { throw: "x" } }));
    expect(await client.envrcpt("<b@example.net>")).toEqual({ action: "noreply" });
    client.abort();
    const next = await client.message(MESSAGE, { envfrom: script({ envrcpt: {} }) });
    expect(next.reply).toEqual({ action: "continue" });
    client.quit();
  });
});

test("NR_RCPT: the failure is answered at the next replying stage, DATA", async () => {
  const filter = await negotiating(["NR_RCPT"], "");
  const client = await open(filter, "data.example");
  const result = await client.message(MESSAGE, { envfrom: script({ envrcpt: { throw: "x" } }) });
  expect(result.replies.map((r) => r.stage)).toEqual(["envfrom", "envrcpt", "data"]);
  expect(result.reply).toEqual(REPLY);
  client.quit();
});

test("NR_CONN: a failed connect tempfails every later stage of the connection", async () => {
  const filter = await negotiating(["NR_CONN"], "");
  const client = await filter.client({ timeout: 5000 });
  expect(await client.connect("conn.example", null, script({ connect: { throw: "dnsbl down" } }))).toEqual({
    action: "noreply",
  });
  expect(await client.helo("conn.example")).toEqual(REPLY);
  expect(await client.envfrom("<a@example.org>")).toEqual(REPLY);
  expect(await client.envfrom("<c@example.org>")).toEqual(REPLY);
  client.quit();
});

describe("without no-reply steps", () => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await startFilter();
  });

  test.each([
    ["No_reply", "envrcpt", "did not negotiate NR_RCPT"],
    ["Skip", "envrcpt", "which only body may answer"],
    ["No_reply", "eom", "did not negotiate a no-reply step"],
  ])("%s from %s is a bad return, answered 451", async (stat, cb, why) => {
    const client = await open(filter, `${stat}-${cb}.example`);
    const result = await client.message(MESSAGE, { envfrom: script({ [cb]: { stat } }) });
    expect(result.reply).toEqual(REPLY);
    const reported = await filter.waitFor((e) => e.event === "reported" && e.cb === cb && e.message.includes(why));
    expect(reported.kind).toBe("bad-return");
    client.quit();
  });

  test("Skip from body skips the rest of the body", async () => {
    const client = await open(filter, "skip.example");
    const result = await client.message({ ...MESSAGE, body: "x".repeat(200_000) }, {
      envfrom: script({ body: { stat: "Skip" } }),
    });
    expect(result.reply).toEqual({ action: "continue" });
    const ctx = await filter.ctxOf("skip.example");
    expect(filter.eventsOf(ctx).filter((e) => e.cb === "body")).toHaveLength(1);
    client.quit();
  });
});
