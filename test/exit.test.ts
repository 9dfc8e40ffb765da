/**
 * The program ends while main runs: process.exit, an uncaught exception and
 * an unhandled rejection each end the process promptly with the runtime's
 * exit code, under Node, Deno and Bun. (Under Node, libmilter's main loop on
 * a libuv pool thread used to make exit wait forever.)
 */

import { afterAll, describe, expect, test } from "vitest";
import { killAll, startFilter } from "./helpers/filter.ts";
import { type Runtime, RUNTIMES, runtimeVersion } from "./helpers/runtimes.ts";

afterAll(killAll);

/** Resolves with the exit, or with "still running" after `ms`. */
function within<T>(promise: Promise<T>, ms: number): Promise<T | "still running"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"still running">((resolve) => timer = setTimeout(() => resolve("still running"), ms));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

describe.each(RUNTIMES)("under %s", (runtime: Runtime) => {
  test.each([
    ["exit", 7],
    ["throw", 1],
    ["reject", 1],
  ])("EXIT=%s ends the process with code %i", async (mode, code) => {
    runtimeVersion(runtime);
    const filter = await startFilter({ runtime, fixture: "exit.ts", env: { EXIT: mode } });
    const client = await filter.client();
    // The process ends right after its connect callback, perhaps before the reply reaches us.
    const connected = client.connect("client.example", null).catch(() => null);
    expect(await within(filter.exited, 10_000)).toEqual({ code, signal: null });
    await connected;
    client.close();
  });
});

test("under Node with one libuv pool thread, file I/O still completes while main runs", async () => {
  const filter = await startFilter({ fixture: "exit.ts", env: { EXIT: "readfile", UV_THREADPOOL_SIZE: "1" } });
  const client = await filter.client();
  const connected = client.connect("client.example", null).catch(() => null);
  expect(await within(filter.exited, 10_000)).toEqual({ code: 7, signal: null });
  await connected;
  client.close();
});
