/**
 * A round trip to the JS thread only where the filter's answer is needed:
 * the README's filter (envrcpt and eom) costs libmilter's threads two waits
 * per message, as a C filter handing its callbacks to one thread would. The
 * shim answers negotiate itself (the filter has no negotiate) and queues
 * close (its answer is ignored, the filter has none); without the shim both
 * come to JS and wait (fixtures/round-trips.ts). Through the shim, the
 * shim's own counts agree: every call came through its one queue.
 */

import { afterAll, expect, test } from "vitest";
import { killAll, MESSAGE, NO_SHIM, startFilter } from "./helpers/filter.ts";

afterAll(killAll);

const MESSAGES = 20;
const CONCURRENT = 30;

/** One message on a connection of its own, as Postfix sends one per SMTP session. */
async function oneMessage(filter: Awaited<ReturnType<typeof startFilter>>, host: string): Promise<void> {
  const client = await filter.client();
  expect((await client.connect(host, null)).action).toBe("continue");
  const { reply, modifications } = await client.message(MESSAGE);
  expect(reply.action).toBe("continue");
  expect(modifications).toEqual([expect.objectContaining({ type: "addheader", name: "X-Stamped" })]);
  client.close();
}

test(`the README's filter: ${NO_SHIM ? "four round trips per message without the shim" : "two round trips per message"}`, async () => {
  const filter = await startFilter({ fixture: "round-trips.ts" });
  // One after the other, libmilter reuses context addresses while the closes before are still queued.
  for (let i = 0; i < MESSAGES; i++) await oneMessage(filter, `host${i}.example`);
  await Promise.all(Array.from({ length: CONCURRENT }, (_, i) => oneMessage(filter, `together${i}.example`)));
  const spam = await filter.client();
  await spam.connect("spam.example", null);
  await spam.envfrom("<a@example.org>");
  expect(await spam.envrcpt("<spam@example.net>")).toMatchObject({ smtpCode: 550 });
  spam.close();
  await filter.signal("SIGTERM"); // drains: every connection has closed when main returns
  const { roundTrips, queued, mixed, shim } = await filter.waitFor((e) => e.event === "calls");
  expect(mixed).toBe(0); // no connection saw another's private data
  const messages = MESSAGES + CONCURRENT;
  const connections = messages + 1;
  const callbacks = messages * 2 + 1; // envrcpt and eom per message, and the spam recipient
  if (NO_SHIM) {
    expect(roundTrips).toBe(callbacks + 2 * connections); // negotiate and close too
    expect(queued).toBe(0);
  } else {
    expect(roundTrips).toBe(callbacks);
    expect(queued).toBe(connections); // close, queued: the binding releases the connection
    // One relay: every call came to JS through the shim's queue, and the shim counted the same calls.
    expect(shim).toMatchObject({ relayed: roundTrips, queued });
    expect(shim.rings).toBeGreaterThan(0);
    expect(shim.rings).toBeLessThanOrEqual(roundTrips + queued);
  }
});
