/**
 * The cost of one callback round trip: the time for an MTA command answered
 * by a JS callback, minus the same command answered by libmilter alone
 * (callback left out, command sent anyway). Both run in the same process
 * layout, interleaved, under Node, Deno and Bun.
 *
 *   npx tsx bench/roundtrip.ts [round trips per run, default 20000]
 */

import process from "node:process";
import { killAll, startFilter } from "../test/helpers/filter.ts";
import { RUNTIMES, runtimeVersion } from "../test/helpers/runtimes.ts";

const N = Number(process.argv[2] ?? 20_000);
const ROUNDS = 3;

async function perCommand(runtime: (typeof RUNTIMES)[number], omitHelo: boolean): Promise<number> {
  const filter = await startFilter({
    runtime,
    fixture: "../../bench/fixtures/helo.ts",
    env: omitHelo ? { OMIT_HELO: "1" } : {},
  });
  const client = await filter.client({ sendSkipped: true });
  await client.connect("bench.example", null);
  for (let i = 0; i < 1000; i++) await client.helo("warmup");
  const start = process.hrtime.bigint();
  for (let i = 0; i < N; i++) await client.helo("bench");
  const micros = Number(process.hrtime.bigint() - start) / 1000 / N;
  client.quit();
  await filter.kill();
  return micros;
}

const median = (xs: number[]): number => xs.toSorted((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`${N} HELO round trips per run, median of ${ROUNDS} interleaved runs, unix socket`);
console.log("runtime           with JS callback   libmilter alone   callback cost");
for (const runtime of RUNTIMES) {
  const withJs: number[] = [], alone: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    withJs.push(await perCommand(runtime, false));
    alone.push(await perCommand(runtime, true));
  }
  const [a, b] = [median(withJs), median(alone)];
  console.log(
    `${`${runtime} ${runtimeVersion(runtime)}`.padEnd(18)}${a.toFixed(1).padStart(10)} µs${
      b.toFixed(1).padStart(15)
    } µs${(a - b).toFixed(1).padStart(13)} µs`,
  );
}
await killAll();
