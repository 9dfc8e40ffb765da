/**
 * Shutting down: stop() from a callback, SIGINT/SIGTERM/SIGHUP, draining
 * open connections while refusing new ones, the drain timeout, and a process
 * that then exits by itself with code 0, its handlers and socket file gone.
 */

import { existsSync, readdirSync, readFileSync } from "node:fs";
import { afterAll, expect, test } from "vitest";
import { MilterClient } from "../src/testing/mod.ts";
import { killAll, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);
const socketFile = (spec: string): string => spec.slice("unix:".length);

test("stop() from a callback ends main; the process exits by itself", async () => {
  const filter = await startFilter();
  expect(existsSync(socketFile(filter.spec))).toBe(true);
  const client = await filter.client();
  await client.connect("client.example", null, script({ helo: { stop: true } }));
  expect((await client.helo("x")).action).toBe("continue");
  client.quit();
  expect(await filter.exited).toEqual({ code: 0, signal: null });
  expect(filter.events.find((e) => e.event === "stopped")).toEqual({ event: "stopped", signalListeners: [0, 0, 0] });
  expect(existsSync(socketFile(filter.spec))).toBe(false);
});

test.each(["SIGTERM", "SIGINT", "SIGHUP"] as const)(
  "%s stops the filter like a C milter, exit code 0",
  async (signal) => {
    const filter = await startFilter();
    const started = Date.now();
    expect(await filter.signal(signal)).toEqual({ code: 0, signal: null });
    expect(Date.now() - started).toBeLessThan(4000); // no wait for libmilter's 5 s accept loop
    expect(filter.events.find((e) => e.event === "stopped")?.signalListeners).toEqual([0, 0, 0]);
    expect(existsSync(socketFile(filter.spec))).toBe(false);
  },
);

test("a message in flight at SIGTERM finishes; new connections are refused meanwhile", async () => {
  const filter = await startFilter({ env: { FLAGS: "ADDHDRS", DRAIN: "20" } });
  const client = await filter.client();
  await client.connect("client.example", null);
  await client.envfrom("<a@example.org>", [], script({ eom: { actions: [["addheader", "X-Done", "yes"]] } }));
  await client.envrcpt("<b@example.net>");
  filter.child.kill("SIGTERM");
  // Draining: a new connection is refused at its first callback, connect, so the MTA tempfails it. Probe
  // until the filter has taken the signal; a probe that came before reached the filter and closes again.
  const probes: string[] = [];
  await expect.poll(async () => {
    const host = `late${probes.length}.example`;
    probes.push(host);
    const late = await MilterClient.open(filter.spec, { timeout: 5000 });
    const reply = await late.connect(host, null);
    late.quit();
    return reply;
  }, { timeout: 5000, interval: 20 }).toEqual({ action: "tempfail" });
  const earlier = probes.slice(0, -1);
  for (const host of earlier) await filter.ctxOf(host);
  // The refused one never reached the filter.
  expect(filter.callbacks("connect").map((e) => e.args[0])).toEqual(["client.example", ...earlier]);
  expect(filter.child.exitCode).toBeNull();
  await client.data();
  await client.eoh();
  await client.body("still flowing\r\n");
  const result = await client.eom();
  expect(result.reply.action).toBe("continue");
  expect(result.modifications).toEqual([{ type: "addheader", name: "X-Done", value: "yes" }]);
  client.quit();
  expect(await filter.exited).toEqual({ code: 0, signal: null });
});

test("without a connect callback too, a new connection is refused at connect while draining", async () => {
  // The shim answers negotiate, then refuses connect with Tempfail: refused at negotiation, the
  // connection would get the MTA's milter_default_action, which may be to accept it unfiltered.
  const filter = await startFilter({ env: { FLAGS: "ADDHDRS", DRAIN: "20", OMIT: "connect" } });
  const client = await filter.client();
  await client.helo("client.example");
  filter.child.kill("SIGTERM");
  // Probe until the filter has taken the signal; a probe that came before is let through.
  await expect.poll(async () => {
    const late = await MilterClient.open(filter.spec, { timeout: 5000 });
    const reply = await late.connect("late.example", null);
    late.quit();
    return reply;
  }, { timeout: 5000, interval: 20 }).toEqual({ action: "tempfail" });
  expect(filter.child.exitCode).toBeNull();
  const result = await client.message({
    from: "<a@example.org>",
    rcpt: ["<b@example.net>"],
    headers: [],
    body: "still flowing\r\n",
  });
  expect(result.reply.action).toBe("continue");
  client.quit();
  expect(await filter.exited).toEqual({ code: 0, signal: null });
});

test("an idle connection does not hold shutdown past the drain timeout", async () => {
  const filter = await startFilter({ env: { DRAIN: "1" } });
  const client = await filter.client();
  await client.connect("idle.example", null);
  const started = Date.now();
  expect(await filter.signal("SIGTERM")).toEqual({ code: 0, signal: null });
  expect(Date.now() - started).toBeGreaterThanOrEqual(900);
  expect(Date.now() - started).toBeLessThan(8000);
  await client.closed();
});

test("libmilter's signal thread is not started: no thread but JS's takes a stop signal", async () => {
  // smfi_main would start a thread waiting in sigwait for SIGHUP, SIGTERM and SIGINT, and the kernel
  // hands a process signal to any thread that accepts it: now and then that thread, which stops
  // libmilter undrained. main runs libmilter's listener without it.
  const filter = await startFilter();
  const pid = filter.child.pid!;
  const client = await filter.client(); // the listener runs, every thread of it started
  await client.connect("client.example", null);
  const sigwaiters = readdirSync(`/proc/${pid}/task`).filter((tid) =>
    readFileSync(`/proc/${pid}/task/${tid}/wchan`, "utf8").includes("sigtimedwait")
  );
  expect(sigwaiters).toEqual([]);
  client.quit();
  expect(await filter.signal("SIGTERM")).toEqual({ code: 0, signal: null });
  expect(filter.stderr).not.toContain("libmilter's signal thread took the stop signal");
  expect(existsSync(socketFile(filter.spec))).toBe(false);
});

test("SIGTERM with 50 messages in flight: every one finishes, the socket file goes, exit code 0", async () => {
  const filter = await startFilter({ env: { FLAGS: "ADDHDRS", DRAIN: "20" } });
  const clients = await Promise.all(Array.from({ length: 50 }, async (_, i) => {
    const client = await filter.client();
    await client.connect(`inflight${i}.example`, null);
    await client.envfrom("<a@example.org>", [], script({ eom: { actions: [["addheader", "X-Finished", `${i}`]] } }));
    await client.envrcpt("<b@example.net>");
    return client;
  }));
  filter.child.kill("SIGTERM");
  const results = await Promise.all(clients.map(async (client, i) => {
    await client.data();
    await client.header("Subject", `in flight ${i}`);
    await client.eoh();
    await client.body("finishing after SIGTERM\r\n");
    const { reply, modifications } = await client.eom();
    client.quit();
    return reply.action === "continue" && modifications[0]?.type === "addheader" && modifications[0].value === `${i}`;
  }));
  expect(results.filter(Boolean)).toHaveLength(50);
  expect(await filter.exited).toEqual({ code: 0, signal: null });
  expect(existsSync(socketFile(filter.spec))).toBe(false);
});
