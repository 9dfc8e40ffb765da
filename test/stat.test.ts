/**
 * Every Stat a callback can answer, and what the MTA side receives for it;
 * negotiation in both directions.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { MilterClient } from "../src/testing/mod.ts";
import { type FilterProcess, killAll, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);

describe("answers", () => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await startFilter({ env: { FLAGS: "ADDHDRS" } });
  });

  test.each([
    ["Continue", "continue"],
    ["Reject", "reject"],
    ["Tempfail", "tempfail"],
    ["Accept", "accept"],
    ["Discard", "discard"],
  ])("%s at RCPT answers %s", async (stat, action) => {
    const client = await filter.client();
    await client.connect("client.example", null);
    await client.envfrom("<a@example.org>", [], script({ envrcpt: { stat } }));
    expect((await client.envrcpt("<b@example.net>")).action).toBe(action);
    client.quit();
  });

  test.each([["Reject", "reject"], ["Tempfail", "tempfail"], ["Accept", "accept"]])(
    "%s at connect answers %s",
    async (stat, action) => {
      const client = await filter.client();
      expect((await client.connect("client.example", null, script({ connect: { stat } }))).action).toBe(action);
      client.quit();
    },
  );

  test("Discard and Reject at end of message", async () => {
    for (const [stat, action] of [["Discard", "discard"], ["Reject", "reject"]]) {
      const client = await filter.client();
      await client.connect("client.example", null);
      const result = await client.message({
        from: "<a@example.org>",
        rcpt: ["<b@example.net>"],
        headers: [],
        body: "x\r\n",
      }, { envfrom: script({ eom: { stat } }) });
      expect(result.reply.action).toBe(action);
      client.quit();
    }
  });
});

describe("negotiation", () => {
  test("without a negotiate callback the filter asks for exactly what libmilter would", async () => {
    // Same flags and callbacks as a C probe filter (connect, helo, eom, close; ADDHDRS), which answers (6, 0x1, 0x37c).
    const filter = await startFilter({
      env: { FLAGS: "ADDHDRS", OMIT: "envfrom,envrcpt,header,eoh,body,abort,unknown,data" },
    });
    const client = await filter.client();
    expect([client.negotiated.version, client.negotiated.actionMask, client.negotiated.stepMask]).toEqual([
      6,
      0x1,
      0x37c,
    ]);
    expect(client.negotiated.steps).toEqual(["NOMAIL", "NORCPT", "NOBODY", "NOHDRS", "NOEOH", "NOUNKNOWN", "NODATA"]);
    // Skipped stages are not sent at all, as an MTA would not.
    expect(await client.envfrom("<a@example.org>")).toEqual({ action: "continue", skipped: true });
    client.quit();
  });

  test("the negotiate callback sees the offer and its answer reaches the MTA", async () => {
    const filter = await startFilter({
      env: {
        FLAGS: "ADDHDRS",
        OMIT: "data",
        NEGOTIATE: JSON.stringify({
          result: ["Continue", ["ADDHDRS", "CHGBODY", "SETSYMLIST"], ["NOHELO", "NR_HDR", "SKIP"]],
          symlist: { CONNECT: "{client_addr} j", EOM: "i" },
        }),
      },
    });
    const client = await filter.client({
      actions: ["ADDHDRS", "CHGBODY", "SETSYMLIST", "QUARANTINE"],
      steps: ["NOHELO", "NR_HDR", "NODATA", "SKIP", "HDR_LEADSPC"],
    });
    const event = await filter.waitFor((e) => e.cb === "negotiate");
    expect(event.args[0]).toEqual(["ADDHDRS", "CHGBODY", "QUARANTINE", "SETSYMLIST"]);
    // libmilter adds the NR_* steps it can fake to the MTA's offer.
    expect(event.args[1]).toEqual([
      "NOHELO",
      "NR_HDR",
      "NODATA",
      "SKIP",
      "NR_CONN",
      "NR_HELO",
      "NR_MAIL",
      "NR_RCPT",
      "NR_DATA",
      "NR_UNKN",
      "NR_EOH",
      "NR_BODY",
      "HDR_LEADSPC",
    ]);
    expect(event.symlist).toEqual([{ fn: "setsymlist", ok: true, result: null }, {
      fn: "setsymlist",
      ok: true,
      result: null,
    }]);
    expect(client.negotiated.actions).toEqual(["ADDHDRS", "CHGBODY", "SETSYMLIST"]);
    // The filter's own steps, plus NODATA for its absent data callback (libmilter drops it when not offered).
    expect(client.negotiated.steps).toEqual(["NOHELO", "NR_HDR", "NODATA", "SKIP"]);
    expect(client.negotiated.macros).toEqual({ CONNECT: "{client_addr} j", EOM: "i" });

    // NR_HDR: header callbacks answer No_reply and the stream stays in step.
    await client.connect("client.example", null);
    await client.envfrom("<a@example.org>", [], script({ header: { stat: "No_reply" }, body: { stat: "Skip" } }));
    await client.envrcpt("<b@example.net>");
    expect(await client.header("Subject", "x")).toEqual({ action: "noreply" });
    expect((await client.eoh()).action).toBe("continue");
    expect((await client.body("first chunk")).action).toBe("skip");
    expect((await client.eom()).reply.action).toBe("continue");
    client.quit();
  });

  test("an absent callback's NO* step is asked for only when the MTA offers it (else libmilter drops the connection)", async () => {
    const filter = await startFilter({
      env: { OMIT: "helo", NEGOTIATE: JSON.stringify({ result: ["Continue", [], []] }) },
    });
    const client = await filter.client({ steps: ["NOCONNECT", "NR_HDR"], timeout: 5000 });
    expect(client.negotiated.steps).toEqual([]);
    // The MTA sends HELO anyway; libmilter answers it without the absent callback.
    expect(await client.helo("client.example")).toEqual({ action: "continue" });
    client.quit();
  });

  test("All takes every offered action; any other answer refuses the connection", async () => {
    const all = await startFilter({ env: { NEGOTIATE: JSON.stringify({ result: ["All", [], []] }) } });
    const client = await all.client({ actions: ["ADDHDRS", "QUARANTINE"] });
    expect(client.negotiated.actions).toEqual(["ADDHDRS", "QUARANTINE"]);
    client.quit();
    const refuse = await startFilter({ env: { NEGOTIATE: JSON.stringify({ result: ["Reject", [], []] }) } });
    await expect(MilterClient.open(refuse.spec, { timeout: 5000 })).rejects.toThrow(/closed/);
  });
});
