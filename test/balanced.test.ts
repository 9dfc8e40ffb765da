/**
 * Past one JS thread, the field's way: several filter processes behind a TCP
 * balancer, here HAProxy (Debian's `haproxy`) in `mode tcp` with `balance
 * leastconn`, each process health-checked on its metrics endpoint (which the
 * JS thread serves: a wedged JS thread fails it, a bare TCP check would not).
 * Three processes, one per runtime, serve one MTA side; each counts its own
 * messages, and together they count every message sent.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, test } from "vitest";
import { MilterClient } from "../src/testing/mod.ts";
import { type FilterProcess, freePort, killAll, startFilter } from "./helpers/filter.ts";
import { RUNTIMES } from "./helpers/runtimes.ts";

const HAPROXY = "/usr/sbin/haproxy";

let haproxy: ChildProcess | null = null;
afterAll(async () => {
  haproxy?.kill("SIGKILL");
  await killAll();
});

/** The HAProxy configuration the README shows, for `servers` (milter port, metrics port). */
function haproxyConfig(front: number, servers: { name: string; port: number; metrics: number }[]): string {
  return [
    "defaults",
    "  mode tcp",
    "  timeout connect 5s",
    "  timeout client 10m",
    "  timeout server 10m",
    "frontend milter",
    `  bind 127.0.0.1:${front}`,
    "  default_backend filters",
    "backend filters",
    "  balance leastconn",
    "  option httpchk GET /metrics",
    ...servers.map((s) => `  server ${s.name} 127.0.0.1:${s.port} check port ${s.metrics} inter 500ms`),
    "",
  ].join("\n");
}

async function messagesOf(metrics: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
  return Number(/^milter_messages_total\{[^}]*\} (\d+)$/m.exec(text)![1]);
}

test("three filter processes (Node, Deno, Bun) behind HAProxy share 600 messages, each counting its own", async () => {
  const dir = mkdtempSync(join(tmpdir(), "milter-balanced-"));
  const rules = join(dir, "rules.json");
  writeFileSync(rules, JSON.stringify({ tag: "H", reject: "spam" }));
  const servers: { name: string; port: number; metrics: number; filter: FilterProcess }[] = [];
  for (const runtime of RUNTIMES) {
    const metrics = await freePort();
    const filter = await startFilter({
      runtime,
      socket: "inet",
      fixture: "operations.ts",
      env: { RULES: rules, METRICS: `inet:${metrics}@127.0.0.1` },
    });
    servers.push({ name: runtime, port: Number(/^inet:(\d+)@/.exec(filter.spec)![1]), metrics, filter });
  }
  const front = await freePort();
  const config = join(dir, "haproxy.cfg");
  writeFileSync(config, haproxyConfig(front, servers));
  haproxy = spawn(HAPROXY, ["-f", config, "-db"], { stdio: ["ignore", "ignore", "pipe"] });
  let haproxyErr = "";
  haproxy.stderr!.setEncoding("utf8").on("data", (t: string) => haproxyErr += t);
  const spec = `inet:${front}@127.0.0.1`;
  // Up once it forwards a milter connection (and its checks passed: a server is used only once up).
  await expect.poll(async () => {
    try {
      const probe = await MilterClient.open(spec, { timeout: 2000 });
      probe.quit();
      return "up";
    } catch (error) {
      return `${error} ${haproxyErr}`;
    }
  }, { timeout: 15_000, interval: 200 }).toBe("up");
  const before = await Promise.all(servers.map((s) => messagesOf(s.metrics)));

  const worker = async (w: number): Promise<void> => {
    for (let m = 0; m < 20; m++) {
      const client = await MilterClient.open(spec);
      await client.connect(`w${w}.example`, null);
      const result = await client.message(
        { from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [["Subject", "x"]], body: "x\r\n" },
      );
      expect(result.modifications).toEqual([{ type: "addheader", name: "X-Rules", value: "H/H" }]);
      client.quit();
    }
  };
  await Promise.all(Array.from({ length: 30 }, (_, w) => worker(w)));

  const after = await Promise.all(servers.map((s) => messagesOf(s.metrics)));
  const served = after.map((n, i) => n - before[i]);
  expect(served.reduce((a, b) => a + b, 0)).toBe(600);
  for (const n of served) expect(n).toBeGreaterThan(0); // leastconn spread them over every process
});
