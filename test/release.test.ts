/**
 * Nothing of a connection outlives it: after close, its private data and
 * its Ctx can be garbage-collected even though the filter never cleared
 * them, while a live connection keeps its own.
 */

import { afterAll, expect, test } from "vitest";
import { killAll, startFilter } from "./helpers/filter.ts";

afterAll(killAll);

test("private data and contexts of closed connections are collectable", async () => {
  const filter = await startFilter({ fixture: "gc.ts" });
  for (let i = 0; i < 50; i++) {
    const client = await filter.client();
    await client.connect(`c${i}.example`, null);
    client.quit();
    await client.closed();
  }
  const reporter = await filter.client();
  await reporter.connect("reporter.example", null);
  // libmilter finishes the close callbacks of the 50 connections on its own time, and finalizers run after
  // a GC as tasks of their own: ask for reports until the counts are right (or the poll gives up).
  let asked = 0;
  const report = async (): Promise<Record<string, unknown>> => {
    const seq = ++asked;
    await reporter.helo("report");
    const { seq: _, ...counts } = await filter.waitFor((e) => e.event === "report" && e.seq === seq);
    return counts;
  };
  const settled = { event: "report", created: 51, privFreed: 50, ctxFreed: 50, alive: 51 };
  await expect.poll(report, { timeout: 10_000, interval: 50 }).toEqual(settled);
  // And they stay so: the live connection's data and Ctx are still held after more collections.
  expect(await report()).toEqual(settled);
  reporter.quit();
});
