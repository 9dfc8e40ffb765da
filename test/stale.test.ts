/**
 * A callback's uses of its Ctx end with its answer: code it left running (a
 * Promise past callbackTimeout, a timer) is refused with MilterError and
 * reported as "stale", even while another callback of the same connection
 * is pending and would otherwise take its writes, and a pipelined callback's
 * code cannot read the macros captured for the call after it. Under
 * Node, Deno and Bun (fixtures/stale.ts).
 */

import { afterAll, describe, expect, test } from "vitest";
import { FAILED_REPLY, type FilterProcess, killAll, startFilter } from "./helpers/filter.ts";
import { RUNTIMES } from "./helpers/runtimes.ts";

afterAll(killAll);

/** Every protocol step of version 6 but NR_HDR (0x80). */
const WITHOUT_NR_HDR = 0x1fffff & ~0x80;

const STALE = expect.stringContaining("left running");
const FAILED = { ...FAILED_REPLY, text: "451 4.3.0 mail filter stale failed; try again later" };

/**
 * Waits until the filter has printed `attemptCount` attempt events and `reportCount`
 * report events: they are written to a pipe, so they may arrive after the
 * milter reply that followed them.
 */
async function printed(filter: FilterProcess, attemptCount: number, reportCount: number): Promise<void> {
  const count = (event: string): number => filter.events.filter((e) => e.event === event).length;
  await filter.waitFor(() => count("attempt") >= attemptCount && count("reported") >= reportCount);
}

function attempts(filter: FilterProcess): Record<string, unknown> {
  return Object.fromEntries(
    filter.events.filter((e) => e.event === "attempt").map((e) => [e.what, e.error ?? { ok: e.ok }]),
  );
}

describe.each(RUNTIMES)("under %s", (runtime) => {
  test("a timed-out envrcpt's Promise and an envfrom timer cannot edit the message while eom is pending", async () => {
    const filter = await startFilter({ runtime, fixture: "stale.ts" });
    const client = await filter.client({ steps: WITHOUT_NR_HDR });
    await client.connect("client.example", { family: "inet", address: "192.0.2.1", port: 4000 });
    const result = await client.message({
      from: "<a@example.org>",
      rcpt: ["<slow@example.net>", "<b@example.net>"],
      headers: [["Subject", "hi"]],
      body: "the body as sent\r\n",
    });
    client.quit();
    expect(result.replies.filter((r) => r.stage === "envrcpt").map((r) => r.reply)).toEqual([
      FAILED,
      { action: "continue" },
    ]);
    expect(result.reply).toEqual({ action: "continue" });
    expect(result.modifications).toEqual([{ type: "addheader", name: "X-Eom", value: "yes" }]);
    await printed(filter, 3, 4);
    expect(attempts(filter)).toEqual({ "addheader": STALE, "replacebody": STALE, "timer setreply": STALE });
    const reports = filter.events.filter((e) => e.event === "reported").map((e) => `${e.cb} ${e.kind}`);
    expect(reports.sort()).toEqual(["envfrom stale", "envrcpt stale", "envrcpt stale", "envrcpt timeout"]);
  });

  test("a pipelined header callback's code cannot read getsymval once the next header's call runs", async () => {
    const filter = await startFilter({ runtime, fixture: "stale.ts" });
    const client = await filter.client();
    await client.connect("client.example", { family: "inet", address: "192.0.2.1", port: 4000 });
    expect(client.negotiated.steps).toContain("NR_HDR");
    const result = await client.message({
      from: "<a@example.org>",
      rcpt: ["<b@example.net>"],
      headers: [["X-Slow", "1"], ["X-Hold", "2"], ["Subject", "hi"]],
      body: "x\r\n",
    }, { eom: { i: "QUEUE1" } });
    client.quit();
    expect(result.reply).toEqual({ action: "continue" });
    await printed(filter, 2, 2);
    expect(attempts(filter)).toEqual({ "pipelined getsymval": STALE, "timer setreply": STALE });
    const reports = filter.events.filter((e) => e.event === "reported").map((e) => `${e.cb} ${e.kind}`);
    expect(reports.sort()).toEqual(["envfrom stale", "header stale"]);
  });
});
