/**
 * Every way a filter's program ends while MTAs are still sending ends the
 * process with its own exit code, never with an abort: SIGTERM (what
 * systemd sends at each restart) and stop() past the drain (main resolves
 * and the program ends by itself: 0), process.exit(3) while main runs (3),
 * and an uncaught exception (1). 32 connections stream headers the
 * whole time (bench/load/loadgen.c) into a filter slower than they are, pipelined (NR_HDR) or not, over unix and inet
 * sockets, under Node, Deno and Bun. The defect this guards against
 * (libmilter's threads calling into a runtime that is tearing down: SIGABRT)
 * struck about one run in two here; the cases where it did run three times.
 */

import { afterAll, describe, expect, test } from "vitest";
import { killAll, type SocketKind, startFilter } from "./helpers/filter.ts";
import { buildLoadgen } from "./helpers/loadgen.ts";
import { type Runtime, RUNTIMES } from "./helpers/runtimes.ts";

const loadgen = buildLoadgen();
afterAll(async () => {
  await killAll();
  loadgen.remove();
});

type End = "sigterm" | "stop" | "return" | "exit" | "throw";
const EXIT_CODE: Record<End, number> = { sigterm: 0, stop: 0, return: 0, exit: 3, throw: 1 };

async function loadedExit(runtime: Runtime, end: End, socket: SocketKind, steps: string): Promise<void> {
  // A small pipeline bound keeps the queues full: the pump rings on after main has resolved.
  const env = { END: end, STEPS: steps, PIPELINE_BYTES: "1024" };
  const filter = await startFilter({ runtime, socket, fixture: "loaded.ts", env });
  // 32 connections, each sending one message of 5,000 headers after another, until killed.
  const mta = loadgen.start(filter.spec, ["32", "1024", "0", "60", "--headers", "5000"]);
  await filter.waitFor((e) => e.event === "loaded", 30_000);
  if (end === "sigterm") filter.child.kill("SIGTERM");
  const exit = await filter.exited;
  await mta.stop();
  expect(exit, `${runtime} ${end}: ${filter.stderr.slice(-2000)}`).toEqual({ code: EXIT_CODE[end], signal: null });
  if (end === "return") expect(filter.events.some((e) => e.event === "resolved")).toBe(true);
}

describe.each(RUNTIMES)("under %s", (runtime) => {
  // [how it ends, socket, steps negotiated, runs]: the pipelined SIGTERM and stop() runs, where the old
  // defect struck one run in two, are repeated.
  test.each([
    ["sigterm", "unix", "NR_HDR", 3],
    ["sigterm", "inet", "", 1],
    ["stop", "inet", "NR_HDR", 3],
    ["stop", "unix", "", 1],
    ["return", "unix", "NR_HDR", 1],
    ["exit", "unix", "NR_HDR", 2],
    ["exit", "inet", "", 1],
    ["throw", "unix", "NR_HDR", 1],
  ] as [End, SocketKind, string, number][])(
    "%s under load on %s (steps: %s) exits with its own code, %i times",
    async (end, socket, steps, runs) => {
      for (let run = 0; run < runs; run++) await loadedExit(runtime, end, socket, steps);
    },
    120_000,
  );
});
