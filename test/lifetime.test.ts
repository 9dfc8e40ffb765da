/**
 * Lifetimes: private data per connection and its release, and contexts that
 * refuse to be used outside their own callbacks (after close, from a timer,
 * from another connection) before anything reaches C.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type Event, type FilterProcess, killAll, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);
let filter: FilterProcess;
beforeAll(async () => {
  filter = await startFilter({ env: { FLAGS: "ADDHDRS" } });
});

/** The callback events of the connection from `host`, once it has closed. */
const closedEventsOf = async (host: string): Promise<Event[]> => {
  const ctx = await filter.ctxOf(host);
  await filter.waitFor((e) => e.cb === "close" && e.ctx === ctx);
  return filter.eventsOf(ctx);
};

describe("private data", () => {
  test("holds any JS value across the callbacks and messages of one connection", async () => {
    const client = await filter.client();
    await client.connect("priv.example", null, script({ connect: { setpriv: { seen: ["connect"], n: 1 } } }));
    await client.helo("x");
    await client.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "1" }, {
      envfrom: script({ eom: { setpriv: [1, "two", { three: 3 }] } }),
    });
    await client.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "2" }, {
      envfrom: script({ eom: { setpriv: null } }),
    });
    await client.helo("y");
    client.quit();
    const seen = (await closedEventsOf("priv.example")).map((e) => [e.cb, e.priv]);
    expect(seen[0]).toEqual(["connect", null]);
    expect(seen[1]).toEqual(["helo", { seen: ["connect"], n: 1 }]);
    const eoms = seen.filter(([cb]) => cb === "eom");
    expect(eoms[1]).toEqual(["eom", [1, "two", { three: 3 }]]);
    expect(seen.at(-2)).toEqual(["helo", null]); // cleared by setpriv(ctx, null)
  });

  test("is private to its connection and gone after close", async () => {
    const a = await filter.client();
    const b = await filter.client();
    await a.connect("a.example", null, script({ connect: { setpriv: "mine" } }));
    await b.connect("b.example", null);
    await b.helo("b");
    await a.helo("a");
    a.quit();
    b.quit();
    expect((await closedEventsOf("a.example")).find((e) => e.cb === "helo")!.priv).toBe("mine");
    expect((await closedEventsOf("b.example")).find((e) => e.cb === "helo")!.priv).toBeNull();
    // The next connection starts empty, even if libmilter reuses the same memory for its context.
    const c = await filter.client();
    await c.connect("c.example", null);
    await c.helo("c");
    c.quit();
    expect((await closedEventsOf("c.example")).every((e) => e.priv === null)).toBe(true);
  });
});

describe("contexts used where they are not valid", () => {
  test("from a timer after the callback returned", async () => {
    const client = await filter.client();
    await client.connect("timer.example", null);
    await client.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "x" }, {
      envfrom: script({
        eom: { later: [["addheader", "X-Late", "1"], ["getsymval", "i"], ["getpriv"], ["setreply", "550"]] },
      }),
    });
    const ctx = await filter.ctxOf("timer.example");
    await filter.waitFor(() => filter.events.filter((e) => e.event === "later" && e.ctx === ctx).length === 4);
    client.quit(); // the connection stayed open: the context is alive, just not in a callback
    const later = filter.events.filter((e) => e.event === "later" && e.ctx === ctx).map((e) => e.result);
    for (const result of later) {
      expect(result.ok).toBe(false);
      expect(result.name).toBe("MilterError");
      // The timer was set by eom: its uses belong to that call, which is over.
      expect(result.message).toMatch(
        new RegExp(`^Milter\\.${result.fn}: Milter\\.Ctx#${ctx} is used by code its eom callback left running`),
      );
    }
  });

  test("after its connection closed, from another connection, or a fake", async () => {
    const a = await filter.client();
    await a.connect("closed.example", null);
    a.quit();
    const closedCtx = (await closedEventsOf("closed.example"))[0].ctx;
    const open = await filter.client();
    await open.connect("other.example", null);
    const b = await filter.client();
    await b.connect(
      "user.example",
      null,
      script({
        helo: {
          actions: [
            ["@closed.example:getsymval", "i"],
            ["@closed.example:setpriv", 1],
            ["@other.example:getpriv"],
            ["@other.example:setreply", "550"],
            ["fake:getsymval", "i"],
            ["fake:addheader", "X", "y"],
          ],
        },
      }),
    );
    await b.helo("x");
    const userCtx = await filter.ctxOf("user.example");
    const event = await filter.waitFor((e) => e.cb === "helo" && e.ctx === userCtx);
    const otherCtx = await filter.ctxOf("other.example");
    expect(event.actions.map((a: Event) => a.message)).toEqual([
      `Milter.getsymval: Milter.Ctx#${closedCtx} belongs to a connection that has closed`,
      `Milter.setpriv: Milter.Ctx#${closedCtx} belongs to a connection that has closed`,
      expect.stringMatching(new RegExp(`^Milter\\.getpriv: Milter\\.Ctx#${otherCtx} is used outside its callbacks`)),
      expect.stringMatching(new RegExp(`^Milter\\.setreply: Milter\\.Ctx#${otherCtx} is used outside its callbacks`)),
      "Milter.getsymval: expected the Ctx passed to a callback, got an object (Object)",
      "Milter.addheader: expected the Ctx passed to a callback, got an object (Object)",
    ]);
    open.quit();
    b.quit();
    // Nothing of this reached C: the filter still serves.
    const c = await filter.client();
    expect((await c.connect("after.example", null)).action).toBe("continue");
    c.quit();
  });
});
