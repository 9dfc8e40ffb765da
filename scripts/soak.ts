/**
 * Soak: many connections × a few messages through one filter process, with
 * the filter's resident memory sampled every 10% of the run. Bounded: it
 * ends after the given number of connections.
 *
 *   npx tsx scripts/soak.ts [connections=100000] [messages per connection=3] [parallel clients=64] [runtime=node] [async ms]
 *
 * With `async ms`, the filter's envrcpt awaits a timer of that many ms and
 * its eom awaits before stamping (async callbacks); the samples then also
 * show the most Promises pending at once.
 *
 * Prints one JSON line per sample and a verdict: resident memory at the end
 * within 10% of what it was after the first 10% of connections.
 */

import { readFileSync } from "node:fs";
import process from "node:process";
import { killAll, startFilter } from "../test/helpers/filter.ts";
import type { Runtime } from "../test/helpers/runtimes.ts";
import { MilterClient } from "../src/testing/mod.ts";

const [connections, messages, parallel] = [100_000, 3, 64].map((d, i) => Number(process.argv[2 + i] ?? d));
const runtime = (process.argv[5] ?? "node") as Runtime;
const asyncMs = process.argv[6];

/** The filter process's resident set, in MiB. */
const rss = (pid: number): number =>
  Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;

const filter = await startFilter({ runtime, fixture: "stamp.ts", env: asyncMs ? { ASYNC_MS: asyncMs } : {} });
const pid = filter.child.pid!;
const started = Date.now();
let done = 0, failures = 0;
const samples: { connections: number; rssMiB: number; heapUsedMiB: number; seconds: number }[] = [];

/** The filter's JS heap in MiB after a full GC (the fixture reports it on SIGUSR2). */
async function heapUsed(): Promise<number> {
  const before = filter.events.length;
  filter.child.kill("SIGUSR2");
  const stats = await filter.waitFor((e) => e.event === "stats" && filter.events.indexOf(e) >= before);
  return Math.round(stats.heapUsedMiB * 10) / 10;
}

async function worker(): Promise<void> {
  while (done < connections) {
    const n = done++;
    try {
      const client = await MilterClient.open(filter.spec, { timeout: 30_000 });
      await client.connect(`soak${n}.example`, null);
      for (let m = 0; m < messages; m++) {
        const result = await client.message({
          from: "<a@example.org>",
          rcpt: ["<b@example.net>", "<c@example.net>"],
          headers: [["Subject", `soak ${n}/${m}`]],
          body: "x".repeat(2000) + "\r\n",
        });
        if (result.reply.action !== "continue" || result.modifications.length !== 1) failures++;
      }
      client.quit();
    } catch {
      failures++;
    }
    if ((n + 1) % (connections / 10) === 0) {
      const sample = {
        connections: n + 1,
        rssMiB: Math.round(rss(pid) * 10) / 10,
        heapUsedMiB: await heapUsed(),
        seconds: (Date.now() - started) / 1000,
      };
      samples.push(sample);
      console.log(JSON.stringify(sample));
    }
  }
}

await Promise.all(Array.from({ length: parallel }, worker));
await new Promise((resolve) => setTimeout(resolve, 1000));
const first = samples[0].rssMiB, last = rss(pid);
const heapGrowthMiB = (await heapUsed()) - samples[0].heapUsedMiB;
const growth = (last - first) / first;
console.log(JSON.stringify({
  runtime,
  connections,
  messages: connections * messages,
  failures,
  seconds: (Date.now() - started) / 1000,
  rssAfterFirstTenthMiB: first,
  rssAtEndMiB: Math.round(last * 10) / 10,
  growthPercent: Math.round(growth * 1000) / 10,
  heapAfterGcGrowthMiB: Math.round(heapGrowthMiB * 10) / 10,
  withinTenPercent: growth <= 0.1,
}));
await killAll();
process.exitCode = failures === 0 && growth <= 0.1 ? 0 : 1;
