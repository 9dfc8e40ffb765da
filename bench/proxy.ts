/**
 * What `milter-test proxy` costs (issue 21): the latency it adds to each
 * message and its throughput beside a direct connection, the load generator
 * (bench/load/loadgen.c) driving the C quick-start filter (bench/filters/
 * filter.c readme) directly and through the proxy, run as a user runs it
 * (`milter-test proxy` under Node, recording every session), beside a bare
 * Node relay (two sockets piped, nothing parsed or written: what any proxy
 * in Node costs); then its memory with a thousand milter sessions open
 * through it at once.
 *
 *   npx tsx bench/proxy.ts              (about 40 s)
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { MilterClient } from "../src/testing/mod.ts";
import { command, ROOT } from "../test/helpers/runtimes.ts";

const dir = mkdtempSync(join(tmpdir(), "milter-bench-proxy-"));
const children: ChildProcess[] = [];
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

execFileSync("gcc", ["-O2", "-pthread", "-o", join(dir, "loadgen"), join(ROOT, "bench/load/loadgen.c")]);
execFileSync("gcc", ["-O2", "-pthread", "-o", join(dir, "filter-c"), join(ROOT, "bench/filters/filter.c"), "-lmilter"]);

const filterSpec = `unix:${join(dir, "filter.sock")}`;
const proxySpec = `unix:${join(dir, "proxy.sock")}`;
const relaySpec = `unix:${join(dir, "relay.sock")}`;
const RELAY = `require("node:net").createServer((a) => { const b = require("node:net").connect(${
  JSON.stringify(join(dir, "filter.sock"))
}); a.pipe(b); b.pipe(a); a.on("error", () => {}); b.on("error", () => {}); }).listen(${
  JSON.stringify(join(dir, "relay.sock"))
});`;
children.push(spawn(process.execPath, ["-e", RELAY], { stdio: "ignore" }));
children.push(spawn(join(dir, "filter-c"), [filterSpec, "readme"], { stdio: "ignore" }));
const [cmd, args] = command("node", join(ROOT, "bin/milter-test.ts"));
const proxy = spawn(cmd, [...args, "proxy", "--listen", proxySpec, "--to", filterSpec, "--record", join(dir, "rec")], {
  stdio: ["ignore", "pipe", "inherit"],
});
children.push(proxy);
let proxyOut = "";
proxy.stdout!.setEncoding("utf8").on("data", (t: string) => proxyOut += t);
while (!proxyOut.includes("milter-test proxy:")) await new Promise((r) => setTimeout(r, 50));
await new Promise((r) => setTimeout(r, 500)); // the C filter's listener

interface Load {
  rate: number;
  p50: number;
  p99: number;
  errors: number;
}
function load(spec: string, concurrency: number): Load {
  const out = execFileSync(join(dir, "loadgen"), [spec, String(concurrency), "1024", "0.5", "3", "--spam"], {
    encoding: "utf8",
  });
  return JSON.parse(out) as Load;
}

const rss = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]);

const rows: string[] = [];
for (const concurrency of [1, 8]) {
  const runs: Record<string, Load[]> = { direct: [], relay: [], proxy: [] };
  for (let round = 0; round < 2; round++) {
    runs.direct.push(load(filterSpec, concurrency));
    runs.relay.push(load(relaySpec, concurrency));
    runs.proxy.push(load(proxySpec, concurrency));
  }
  const best = (list: Load[]): Load => list.reduce((a, b) => (b.rate > a.rate ? b : a));
  const d = best(runs.direct), r = best(runs.relay), t = best(runs.proxy);
  const added = (x: Load): string => `${((x.p50 - d.p50) * 1000).toFixed(0)} µs`;
  rows.push(
    `| ${concurrency} | ${Math.round(d.rate)} | ${Math.round(r.rate)} | ${Math.round(t.rate)} | ` +
      `${(t.rate / d.rate).toFixed(2)}× | ${(t.rate / r.rate).toFixed(2)}× | ${d.p50.toFixed(3)} | ${added(r)} | ` +
      `${added(t)} | ${d.errors + r.errors + t.errors} |`,
  );
}

const idle = rss(proxy.pid!);
const clients: MilterClient[] = [];
for (let i = 0; i < 1000; i++) clients.push(await MilterClient.open(proxySpec));
await Promise.all(clients.map((c) => c.envfrom("<a@example.org>", [])));
const held = rss(proxy.pid!);
const recordings = (): number => readdirSync(join(dir, "rec")).length;
const before = recordings();
for (const client of clients) client.quit();
await Promise.all(clients.map((c) => c.closed()));
while (recordings() < before + 1000) await new Promise((r) => setTimeout(r, 50));

console.log(
  "| concurrency | direct msg/s | bare Node relay | proxy | proxy ÷ direct | proxy ÷ relay | direct p50 ms | " +
    "relay adds (p50) | proxy adds (p50) | errors |",
);
console.log("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const row of rows) console.log(row);
console.log(
  `\nProxy RSS: ${(idle / 1024).toFixed(1)} MiB after the load, ${
    (held / 1024).toFixed(1)
  } MiB with 1,000 sessions open ` +
    `(${((held - idle) / 1000).toFixed(1)} KiB each, negotiated and waiting); ${recordings()} recordings written.`,
);
process.exit(0);
