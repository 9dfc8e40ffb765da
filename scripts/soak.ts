/**
 * Soak: many connections × a few messages through one filter process, with
 * the filter's resident memory sampled every 10% of the run. Bounded: it
 * ends after the given number of connections.
 *
 *   npx tsx scripts/soak.ts [connections=100000] [messages per connection=3] [parallel clients=64] [runtime=node]
 *     [async ms | pipeline]
 *
 * With `async ms`, the filter's envrcpt awaits a timer of that many ms and
 * its eom awaits before stamping (async callbacks); the samples then also
 * show the most Promises pending at once. With `pipeline`, each message has
 * 25 headers and the filter negotiates NR_HDR and NR_BODY and counts them:
 * pipelined callbacks, each message's count checked in its stamp.
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
const pipeline = process.argv[6] === "pipeline";
const asyncMs = pipeline ? undefined : process.argv[6];
const headers: [string, string][] = pipeline
  ? Array.from({ length: 24 }, (_, i): [string, string] => [`X-Soak-${i}`, `header ${i} of a soak message`])
  : [];

/** The filter process's resident set, in MiB. */
const rss = (pid: number): number =>
  Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;

const env: Record<string, string> = asyncMs ? { ASYNC_MS: asyncMs } : pipeline ? { PIPELINE: "1" } : {};
const filter = await startFilter({ runtime, fixture: "stamp.ts", env });
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
          headers: [["Subject", `soak ${n}/${m}`], ...headers],
          body: "x".repeat(2000) + "\r\n",
        });
        if (result.reply.action !== "continue" || result.modifications.length !== 1) failures++;
        else if (pipeline) {
          const stamp = result.modifications[0];
          const counted = "value" in stamp ? JSON.parse(stamp.value) : null;
          if (counted?.headers !== 25 || counted?.bytes !== 2002) failures++;
        }
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
