/**
 * What the binding keeps of each closed connection's negotiation, for a next
 * SMTP session on the same milter connection (after SMFIC_QUIT_NC), stays
 * bounded: an entry goes when the next callback at its context address
 * comes, and past the bound the oldest go; a session whose negotiation was
 * dropped so is refused, never run under a guess (fixtures/negotiations.ts).
 */

import { afterAll, expect, test } from "vitest";
import { FAILED_REPLY, killAll, MESSAGE, startFilter } from "./helpers/filter.ts";
import { buildLoadgen } from "./helpers/loadgen.ts";

const loadgen = buildLoadgen();
afterAll(async () => {
  await killAll();
  loadgen.remove();
});

test("thousands of connections keep at most the bound of negotiations", async () => {
  const filter = await startFilter({ fixture: "negotiations.ts", env: { KEPT: "64" } });
  // 16 connections at a time, one per message, for 2 s: several hundred context addresses.
  const load = loadgen.start(filter.spec, ["16", "1024", "0", "2"]);
  const result = JSON.parse(await load.output) as { messages: number; errors: number };
  expect(result.errors).toBe(0);
  const last = await filter.waitFor((e) => e.event === "closed" && e.closed >= result.messages);
  expect(last.closed).toBeGreaterThan(1000);
  expect(last.kept).toBeLessThanOrEqual(64); // several hundred without the bound
  expect(last.kept).toBeGreaterThan(0);
});

test("after QUIT_NC a session resumes its negotiation; once it was dropped, the session is refused", async () => {
  const filter = await startFilter({ fixture: "negotiations.ts", env: { KEPT: "1" } });
  const a = await filter.client();
  const session = async (): Promise<unknown> => {
    const connected = await a.connect("a.example", null);
    if (connected.action !== "continue") return connected;
    const { reply, modifications } = await a.message(MESSAGE);
    a.quitNc(); // valid after a message: libmilter ignores it elsewhere
    return { reply, modifications };
  };
  const delivered = {
    reply: { action: "continue" },
    modifications: [{ type: "addheader", name: "X-Seen", value: "yes" }],
  };
  expect(await session()).toEqual(delivered);
  expect(await session()).toEqual(delivered); // resumed: ADDHDRS as negotiated
  const b = await filter.client(); // its close drops a's negotiation: only one is kept
  await b.connect("b.example", null);
  b.quit();
  await filter.waitFor((e) => e.event === "closed" && e.closed === 3);
  expect(await session()).toEqual({
    ...FAILED_REPLY,
    text: "451 4.3.0 mail filter negotiations failed; try again later",
  });
  expect(filter.stderr).toContain("negotiation is no longer kept");
  a.quit();
});
