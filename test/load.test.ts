/**
 * Many connections at once. Through the shim, libmilter's threads never
 * enter koffi (one thread of the shim's rings JS for every waiting call), so
 * connections are bounded by the file limit alone. Without the shim,
 * libmilter threads that call into JS each hold one slot of koffi's relay
 * pool until JS answers; a full pool kills the process (V8 "Cannot create a
 * handle without a HandleScope"). The binding then raises the pool to koffi's
 * maximum and keeps connections below it, so past the ceiling connections
 * wait in the listen backlog instead.
 */

import { afterAll, expect, test } from "vitest";
import { type MilterClient, MilterClient as Client } from "../src/testing/mod.ts";
import { type FilterProcess, killAll, startFilter } from "./helpers/filter.ts";

afterAll(killAll);

/**
 * Runs `n` clients at once, each one full message; returns the outcome
 * counts. With `together`, every client first connects and only then do all
 * send their messages, so that all `n` connections are open at the same time.
 */
async function flood(filter: FilterProcess, n: number, together = false): Promise<Record<string, number>> {
  let connected = 0;
  let allConnected: () => void = () => {};
  const barrier = new Promise<void>((resolve) => (allConnected = resolve));
  const arrive = (): void => void (++connected === n && allConnected());
  const outcomes = await Promise.all(Array.from({ length: n }, async (_, i) => {
    let client: MilterClient | null = null;
    try {
      client = await Client.open(filter.spec, { timeout: 60_000 });
      await client.connect(`host${i}.example`, null);
      arrive();
      if (together) await barrier;
      const result = await client.message({
        from: "<a@example.org>",
        rcpt: ["<b@example.net>"],
        headers: [["Subject", `${i}`]],
        body: "hello\r\n",
      });
      const stamp = result.modifications[0];
      return stamp?.type === "addheader" && stamp.value === `host${i}.example`
        ? `${result.reply.action}+stamped`
        : result.reply.action;
    } catch (error) {
      arrive();
      return `error: ${(error as Error).message}`;
    } finally {
      client?.quit();
    }
  }));
  const counts: Record<string, number> = {};
  for (const outcome of outcomes) counts[outcome] = (counts[outcome] ?? 0) + 1;
  return counts;
}

async function stats(filter: FilterProcess): Promise<Record<string, number>> {
  const before = filter.events.length;
  filter.child.kill("SIGUSR2");
  return await filter.waitFor((e) => e.event === "stats" && filter.events.indexOf(e) >= before);
}

test("1,000 simultaneous connections are all served", async () => {
  const filter = await startFilter({ fixture: "stamp.ts" });
  expect(filter.events[0].maxAsync).toBe(4096); // raised from koffi's default of 256
  expect(await flood(filter, 1000, true)).toEqual({ "continue+stamped": 1000 });
  const { max, messages } = await stats(filter);
  expect(messages).toBe(1000);
  expect(max).toBe(1000); // all open at once: far more than koffi's default pool of 256 would survive
  expect(filter.child.exitCode).toBeNull();
});

/** Without the native shim, as on a platform with no prebuilt object. */
const WITHOUT_SHIM = { MILTER_SHIM_PATH: "/nonexistent/milter-test-no-shim/libmilter_shim.so" };

test("5,000 simultaneous connections through the shim, past koffi's pool of 4,096: all open at once", async () => {
  const filter = await startFilter({ fixture: "stamp.ts" });
  expect(await flood(filter, 5000, true)).toEqual({ "continue+stamped": 5000 });
  const { max, messages } = await stats(filter);
  expect(max).toBe(5000); // koffi's pool bounds nothing: only the shim's own thread enters it
  expect(messages).toBe(5000);
  expect(filter.child.exitCode).toBeNull();
});

test("without the shim, 4,000 simultaneous connections; past the ceiling they wait their turn", async () => {
  const filter = await startFilter({ fixture: "stamp.ts", env: WITHOUT_SHIM });
  expect(await flood(filter, 4000, true)).toEqual({ "continue+stamped": 4000 });
  expect((await stats(filter)).max).toBe(4000); // all open at once
  // Beyond the ceiling (about 4,060 under Node): no crash, every message answered.
  expect(await flood(filter, 4500)).toEqual({ "continue+stamped": 4500 });
  const { max, messages } = await stats(filter);
  expect(max).toBeLessThanOrEqual(4096 - 8);
  expect(messages).toBe(8500);
  expect(filter.child.exitCode).toBeNull();
});

test("4,000 simultaneous connections with async callbacks, hundreds of Promises pending at once", async () => {
  const filter = await startFilter({ fixture: "stamp.ts", env: { ASYNC_MS: "50" } });
  expect(await flood(filter, 4000, true)).toEqual({ "continue+stamped": 4000 });
  const { max, messages, maxPending } = await stats(filter);
  expect(max).toBe(4000); // all open at once
  expect(messages).toBe(4000);
  // Each envrcpt waits 50 ms: with 4,000 messages sent at once, many wait together.
  expect(maxPending).toBeGreaterThanOrEqual(100);
  expect(filter.child.exitCode).toBeNull();
});

test("without the shim, past koffi's pool, connections wait instead of crashing the process", async () => {
  // A program that set a small pool itself keeps it; the binding then keeps connections below it.
  const filter = await startFilter({ fixture: "stamp.ts", env: { KOFFI_MAX_ASYNC: "64", ...WITHOUT_SHIM } });
  expect(filter.events[0].maxAsync).toBe(64);
  expect(await flood(filter, 300)).toEqual({ "continue+stamped": 300 });
  const { max, messages } = await stats(filter);
  expect(messages).toBe(300);
  expect(max).toBeLessThanOrEqual(64 - 8);
  expect(filter.child.exitCode).toBeNull();
  expect(filter.child.signalCode).toBeNull();
});

test("through the shim, a program's small koffi pool bounds nothing: 300 connections at once", async () => {
  const filter = await startFilter({ fixture: "stamp.ts", env: { KOFFI_MAX_ASYNC: "64" } });
  expect(filter.events[0].maxAsync).toBe(64);
  expect(await flood(filter, 300, true)).toEqual({ "continue+stamped": 300 });
  const { max, messages } = await stats(filter);
  expect(messages).toBe(300);
  expect(max).toBe(300);
  expect(filter.child.signalCode).toBeNull();
});

test("maxConnections bounds the connections served at once", async () => {
  const filter = await startFilter({ fixture: "stamp.ts", env: { MAX_CONNECTIONS: "20" } });
  expect(await flood(filter, 100)).toEqual({ "continue+stamped": 100 });
  const { max } = await stats(filter);
  expect(max).toBeLessThanOrEqual(20);
  expect(max).toBeGreaterThanOrEqual(10); // a bound, not a throttle to one
});

test("a connection past the ceiling is not served until a slot frees, and never crashes the filter", async () => {
  const filter = await startFilter({ fixture: "stamp.ts", env: { MAX_CONNECTIONS: "5" } });
  const held: MilterClient[] = [];
  // Fill the ceiling with idle connections (the exact count depends on descriptors libmilter opens).
  for (;;) {
    const client = await Client.open(filter.spec, { timeout: 1500 }).catch(() => null);
    if (!client) break;
    await client.connect("held.example", null);
    held.push(client);
    expect(held.length).toBeLessThanOrEqual(8);
  }
  expect(held.length).toBeGreaterThanOrEqual(4);
  // The next one waits in the backlog: an MTA would time out and apply milter_default_action (tempfail).
  const waiting = Client.open(filter.spec, { timeout: 20_000 });
  await new Promise((resolve) => setTimeout(resolve, 1500));
  held.pop()!.quit();
  const late = await waiting; // accepted once a slot is free (libmilter retries accept after 1-2 s)
  await late.connect("late.example", null);
  const result = await late.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "x" });
  expect(result.modifications).toEqual([{ type: "addheader", name: "X-Stamp", value: "late.example" }]);
  late.quit();
  for (const client of held) client.quit();
  expect(filter.child.exitCode).toBeNull();
});
