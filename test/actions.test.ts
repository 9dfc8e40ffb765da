/**
 * Every action function, checked by what the MTA side receives: the
 * modification frames at end of message, the SMTP replies, and clear errors
 * where libmilter would refuse.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { MilterClient } from "../src/testing/mod.ts";
import { type Event, type FilterProcess, killAll, script, startFilter } from "./helpers/filter.ts";

const ALL_FLAGS = "ADDHDRS,CHGHDRS,CHGBODY,ADDRCPT,ADDRCPT_PAR,DELRCPT,QUARANTINE,CHGFROM,SETSYMLIST";
let filter: FilterProcess;
beforeAll(async () => {
  filter = await startFilter({ env: { FLAGS: ALL_FLAGS } });
});
afterAll(killAll);

let messages = 0;
let latestHost = "";
/** The eom callback event of the latest message (its stdout line may arrive after the client's reply). */
const lastEom = async (): Promise<Event> => {
  const connect = await filter.waitFor((e) => e.cb === "connect" && e.args[0] === latestHost);
  return await filter.waitFor((e) => e.cb === "eom" && e.ctx === connect.ctx);
};

/** Runs one message whose callbacks follow `instructions`; returns the eom outcome and the client. */
async function message(
  instructions: Record<string, unknown>,
): Promise<{ client: MilterClient; result: Awaited<ReturnType<MilterClient["message"]>> }> {
  latestHost = `message${++messages}.example`;
  const client = await filter.client();
  await client.connect(latestHost, null);
  const result = await client.message({
    from: "<alice@example.org>",
    rcpt: ["<bob@example.net>"],
    headers: [["Subject", "original"], ["To", "bob@example.net"]],
    body: "original body\r\n",
  }, { envfrom: script(instructions) });
  client.quit();
  return { client, result };
}

describe("modifications at end of message", () => {
  test("addheader, insheader at index 0, chgheader change and delete", async () => {
    const { result } = await message({
      eom: {
        actions: [["addheader", "X-Added", "yes"], ["insheader", 0, "X-Top", "first"], [
          "chgheader",
          "Subject",
          1,
          "changed",
        ], ["chgheader", "To", 1, null]],
      },
    });
    expect(result.reply.action).toBe("continue");
    expect(result.modifications).toEqual([
      { type: "addheader", name: "X-Added", value: "yes" },
      { type: "insheader", index: 0, name: "X-Top", value: "first" },
      { type: "chgheader", index: 1, name: "Subject", value: "changed" },
      { type: "chgheader", index: 1, name: "To", value: "" },
    ]);
  });

  test("chgfrom with and without ESMTP arguments", async () => {
    const { result } = await message({
      eom: { actions: [["chgfrom", "<new@example.org>", "SIZE=42"], ["chgfrom", "<plain@example.org>"]] },
    });
    expect(result.modifications).toEqual([
      { type: "chgfrom", from: "<new@example.org>", args: "SIZE=42" },
      { type: "chgfrom", from: "<plain@example.org>", args: null },
    ]);
  });

  test("addrcpt, addrcpt_par and delrcpt", async () => {
    const { result } = await message({
      eom: {
        actions: [["addrcpt", "<carol@example.net>"], ["addrcpt_par", "<dave@example.net>", "NOTIFY=NEVER"], [
          "addrcpt_par",
          "<erin@example.net>",
          null,
        ], ["delrcpt", "<bob@example.net>"]],
      },
    });
    expect(result.modifications).toEqual([
      { type: "addrcpt", rcpt: "<carol@example.net>" },
      { type: "addrcpt_par", rcpt: "<dave@example.net>", args: "NOTIFY=NEVER" },
      { type: "addrcpt_par", rcpt: "<erin@example.net>", args: null },
      { type: "delrcpt", rcpt: "<bob@example.net>" },
    ]);
  });

  test("replacebody with text, appended by a second call", async () => {
    const { result } = await message({
      eom: { actions: [["replacebody", "new body\r\n"], ["replacebody", "more\r\n"]] },
    });
    expect(new TextDecoder().decode(result.body!)).toBe("new body\r\nmore\r\n");
  });

  test("replacebody with bytes larger than 64 KiB arrives intact", async () => {
    const bytes = Array.from({ length: 100_000 }, (_, i) => (i * 7) % 256);
    const { result } = await message({ eom: { actions: [["replacebody", { sequence: bytes.length }]] } });
    expect(result.modifications.filter((m) => m.type === "replacebody").length).toBeGreaterThan(1);
    expect(Array.from(result.body!)).toEqual(bytes);
  });

  test("progress and quarantine", async () => {
    const { result } = await message({ eom: { actions: [["progress"], ["quarantine", "suspicious attachment"]] } });
    expect(result.modifications).toEqual([{ type: "progress" }, {
      type: "quarantine",
      reason: "suspicious attachment",
    }]);
  });
});

describe("replies", () => {
  test("setreply with Reject at RCPT gives exactly that 5xx", async () => {
    const client = await filter.client();
    await client.connect("client.example", null);
    await client.envfrom(
      "<a@example.org>",
      [],
      script({ envrcpt: { reply: ["550", "5.7.1", "no such user here"], stat: "Reject" } }),
    );
    expect(await client.envrcpt("<x@example.net>")).toEqual({
      action: "replycode",
      text: "550 5.7.1 no such user here",
      smtpCode: 550,
    });
    client.quit();
  });

  test("setreply with Tempfail at eom, and % escaped as libmilter requires", async () => {
    const { result } = await message({ eom: { reply: ["451", "4.7.1", "try again, 100%% sure"], stat: "Tempfail" } });
    expect(result.reply).toEqual({ action: "replycode", text: "451 4.7.1 try again, 100%% sure", smtpCode: 451 });
  });

  test("setmlreply sends a multi-line reply", async () => {
    const { result } = await message({
      eom: { mlreply: ["550", "5.7.0", ["first", "second", "third"]], stat: "Reject" },
    });
    expect(result.reply.text).toBe("550-5.7.0 first\r\n550-5.7.0 second\r\n550 5.7.0 third");
  });

  test("setmlreply takes 32 lines and refuses 33 without truncating", async () => {
    const lines = (n: number): string[] => Array.from({ length: n }, (_, i) => `line ${i + 1}`);
    const { result } = await message({ eom: { mlreply: ["550", null, lines(32)], stat: "Reject" } });
    const text = result.reply.text!.split("\r\n");
    expect(text).toHaveLength(32);
    expect(text[31]).toBe("550 5.0.0 line 32");
    await message({ eom: { mlreply: ["550", null, lines(33)], stat: "Reject" } });
    expect((await lastEom()).mlreply).toMatchObject({
      ok: false,
      name: "MilterError",
      message: "Milter.setmlreply: at most 32 lines are allowed, got 33",
    });
  });

  test.each([
    [["250", null, "ok"], 'Milter.setreply: reply code "250" is not a 4xx or 5xx SMTP code'],
    [["550", "4.7.1", "x"], "Milter.setreply: extended code 4.7.1 does not match the class of 550"],
    [["550", "5.7.1", "two\r\nlines"], "Milter.setreply: line 1 contains CR or LF"],
    [["550", "5.7.1", "x".repeat(981)], "Milter.setreply: line 1 is 981 bytes long, more than 980"],
  ])("setreply refuses %j clearly", async (args, message_) => {
    await message({ eom: { reply: args } });
    expect((await lastEom()).reply).toMatchObject({ ok: false, name: "MilterError", message: message_ });
  });
});

describe("errors that name the function and the reason", () => {
  test("a modification without its flag says which flag is missing", async () => {
    // The shared filter declares every flag; this one declares none. libmilter refuses, and the error says why.
    const bare = await startFilter();
    const client = await bare.client();
    await client.connect("noflag.example", null);
    await client.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "x" }, {
      envfrom: script({ eom: { actions: [["addheader", "X", "y"], ["quarantine", "why"], ["chgfrom", "<c@d>"]] } }),
    });
    client.quit();
    const connect = await bare.waitFor((e) => e.cb === "connect" && e.args[0] === "noflag.example");
    const event = await bare.waitFor((e) => e.cb === "eom" && e.ctx === connect.ctx);
    expect(event.actions.map((a: Event) => a.message)).toEqual([
      "Milter.addheader: the filter did not declare Flag.ADDHDRS (in Filter.flags or from negotiate)",
      "Milter.quarantine: the filter did not declare Flag.QUARANTINE (in Filter.flags or from negotiate)",
      "Milter.chgfrom: the filter did not declare Flag.CHGFROM (in Filter.flags or from negotiate)",
    ]);
  });

  test("modifications outside eom are refused before reaching C", async () => {
    const client = await filter.client();
    await client.connect("outside.example", null);
    await client.envfrom(
      "<a@example.org>",
      [],
      script({
        envrcpt: {
          actions: [
            ["addheader", "X", "y"],
            ["addrcpt", "<c@example.net>"],
            ["replacebody", "x"],
            ["quarantine", "q"],
            ["progress"],
            ["setsymlist", "EOM", "i"],
            ["chgheader", "Subject", 1, "x"],
            ["insheader", 0, "X", "y"],
            ["chgfrom", "<x@example.org>"],
            ["addrcpt_par", "<c@example.net>", null],
            ["delrcpt", "<b@example.net>"],
          ],
        },
      }),
    );
    await client.envrcpt("<b@example.net>");
    client.quit();
    const connect = await filter.waitFor((e) => e.cb === "connect" && e.args[0] === "outside.example");
    const event = await filter.waitFor((e) => e.cb === "envrcpt" && e.ctx === connect.ctx);
    expect(event.actions.map((a: Event) => a.message)).toEqual([
      "Milter.addheader: only allowed in eom, not in envrcpt",
      "Milter.addrcpt: only allowed in eom, not in envrcpt",
      "Milter.replacebody: only allowed in eom, not in envrcpt",
      "Milter.quarantine: only allowed in eom, not in envrcpt",
      "Milter.progress: only allowed in eom, not in envrcpt",
      "Milter.setsymlist: only allowed in negotiate, not in envrcpt",
      "Milter.chgheader: only allowed in eom, not in envrcpt",
      "Milter.insheader: only allowed in eom, not in envrcpt",
      "Milter.chgfrom: only allowed in eom, not in envrcpt",
      "Milter.addrcpt_par: only allowed in eom, not in envrcpt",
      "Milter.delrcpt: only allowed in eom, not in envrcpt",
    ]);
    expect(event.actions.every((a: Event) => a.name === "MilterError")).toBe(true);
  });

  test.each([
    [["addheader", 42, "v"], "Milter.addheader: the header name must be a string, got number 42"],
    [
      ["chgheader", "Subject", -1, "v"],
      "Milter.chgheader: the index must be an integer from 0 to 2147483647, got number -1",
    ],
    [
      ["insheader", 1.5, "X", "v"],
      "Milter.insheader: the index must be an integer from 0 to 2147483647, got number 1.5",
    ],
    [["addrcpt", null], "Milter.addrcpt: the recipient must be a string, got null"],
    [["replacebody", 7], "Milter.replacebody: the body must be a Uint8Array or a string, got number 7"],
    [["quarantine", ""], "Milter.quarantine: the reason must not be empty"],
    [["addheader", "X-Nul", "a\u0000b"], "Milter.addheader: the header value contains a NUL byte"],
    [["getsymval", 3], "Milter.getsymval: the macro name must be a string, got number 3"],
  ])("%j from plain JS is a MilterError", async (call, expected) => {
    await message({ eom: { actions: [call] } });
    expect((await lastEom()).actions[0]).toMatchObject({ ok: false, name: "MilterError", message: expected });
  });
});
