/**
 * End-of-message latency at concurrency 1, over a unix socket and over TCP
 * with and without TCP_NODELAY, for a filter that modifies the message (adds
 * a header, replaces the body). The three run interleaved in one process
 * layout; medians of the rounds are reported.
 *
 *   npx tsx bench/tcp-latency.ts [messages per run, default 300] [rounds, default 3]
 */

import process from "node:process";
import { killAll, script, type SocketKind, startFilter } from "../test/helpers/filter.ts";

const N = Number(process.argv[2] ?? 300), ROUNDS = Number(process.argv[3] ?? 3);
const CONFIGS: { name: string; socket: SocketKind; env: Record<string, string> }[] = [
  { name: "unix", socket: "unix", env: {} },
  { name: "inet, TCP_NODELAY (default)", socket: "inet", env: {} },
  { name: "inet, settcpnodelay(false)", socket: "inet", env: { NODELAY: "0" } },
];
const eom = script({ eom: { actions: [["addheader", "X-Checked", "yes"], ["replacebody", "replaced body\r\n"]] } });

async function run(config: (typeof CONFIGS)[number]): Promise<number[]> {
  const filter = await startFilter({
    socket: config.socket,
    env: { FLAGS: "ADDHDRS,CHGBODY", QUIET: "1", ...config.env },
  });
  const client = await filter.client();
  await client.connect("bench.example", null);
  const times: number[] = [];
  for (let i = 0; i < N + 20; i++) {
    const start = process.hrtime.bigint();
    await client.message({
      from: "<a@example.org>",
      rcpt: ["<b@example.net>"],
      headers: [["Subject", "x"]],
      body: "hello\r\n",
    }, {
      envfrom: eom,
    });
    if (i >= 20) times.push(Number(process.hrtime.bigint() - start) / 1e6); // the first 20 warm up
  }
  client.quit();
  await filter.kill();
  return times.sort((a, b) => a - b);
}

const pct = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
const median = (xs: number[]): number => xs.toSorted((a, b) => a - b)[Math.floor(xs.length / 2)];
const results = new Map(CONFIGS.map((c) => [c.name, { p50: [] as number[], p99: [] as number[] }]));
for (let r = 0; r < ROUNDS; r++) {
  for (const config of CONFIGS) {
    const times = await run(config);
    results.get(config.name)!.p50.push(pct(times, 0.5));
    results.get(config.name)!.p99.push(pct(times, 0.99));
  }
}
const unixP50 = median(results.get("unix")!.p50);
console.log(`${N} messages per run, concurrency 1, median of ${ROUNDS} interleaved rounds (one whole message each)`);
console.log("socket                          p50 ms   p99 ms   p50 / unix p50");
for (const [name, { p50, p99 }] of results) {
  console.log(
    `${name.padEnd(30)}${median(p50).toFixed(2).padStart(8)}${median(p99).toFixed(2).padStart(9)}${
      (median(p50) / unixP50).toFixed(2).padStart(12)
    }×`,
  );
}
await killAll();
