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
  // Let libmilter finish the close callbacks of the 50 connections.
  await new Promise((resolve) => setTimeout(resolve, 300));
  await reporter.helo("report");
  const report = await filter.waitFor((e) => e.event === "report");
  expect(report).toEqual({ event: "report", created: 51, privFreed: 50, ctxFreed: 50, alive: 51 });
  reporter.quit();
});
