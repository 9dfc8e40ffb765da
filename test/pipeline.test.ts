/**
 * Pipelined no-reply stages: at a header, eoh or body stage a connection
 * negotiated as no reply, the shim answers libmilter at once and queues the
 * call; the filter's callback runs later, in order, and the next stage that
 * replies waits for it. What the callback may do with its Ctx, how its
 * failures are answered, and that a connection's queue stays within
 * `pipelineBytes` (libmilter waits instead) are checked here against real
 * libmilter, over a unix socket.
 */

import { afterAll, describe, expect, test } from "vitest";
import type { MessageInput, MessageResult, MilterClient, Modification, Reply } from "../src/testing/mod.ts";
import type { Runtime } from "./helpers/runtimes.ts";
import { type FilterProcess, killAll, startFilter } from "./helpers/filter.ts";

afterAll(killAll);

const FAILED_REPLY = {
  action: "replycode",
  smtpCode: 451,
  text: "451 4.3.0 mail filter pipeline failed; try again later",
};

interface Seen {
  headers: number;
  outOfOrder: number;
  body: number;
  mail: string | null;
  probe: Record<string, { ok?: unknown; error?: string }> | null;
  stats: { bytes: number; peakBytes: number; waits: number; connections: number } | null;
}

function start(env: Record<string, string> = {}, runtime: Runtime = "node"): Promise<FilterProcess> {
  return startFilter({ fixture: "pipeline.ts", readyWhen: "listening", runtime, env });
}

/** A message with `n` headers `X-N: n:<i>`, then `extra`, and a body of `bodyBytes`. */
function message(n: number, extra: [string, string][], bodyBytes: number): MessageInput {
  const headers: [string, string][] = Array.from({ length: n }, (_, i) => ["X-N", `n:${i}`]);
  return {
    from: "<a@example.org>",
    rcpt: ["<b@example.net>"],
    headers: [...headers, ...extra],
    body: "y".repeat(bodyBytes),
  };
}

/** What the filter answered and saw for one message. */
interface Sent {
  reply: Reply;
  seen: Seen | null;
  replies: MessageResult["replies"];
}

async function send(
  client: MilterClient,
  n: number,
  extra: [string, string][] = [],
  bodyBytes = 100 * 1024,
): Promise<Sent> {
  const input = message(n, extra, bodyBytes);
  const result = await client.message(input, { envfrom: { "{mail_addr}": "a@example.org", i: "Q1" } });
  const added = result.modifications.find((m: Modification) => m.type === "addheader" && m.name === "X-Pipeline");
  const seen = added && "value" in added ? JSON.parse(added.value) as Seen : null;
  return { reply: result.reply, seen, replies: result.replies };
}

async function open(filter: FilterProcess): Promise<MilterClient> {
  const client = await filter.client({ timeout: 20_000 });
  await client.connect("pipeline.example", null);
  return client;
}

describe("10,000 headers through a 16 KiB queue, every 100th header awaiting a timer", () => {
  test.each([["node"], ["deno"], ["bun"]] as [Runtime][])(
    "%s: all seen in order, the queue bounded",
    async (runtime) => {
      const filter = await start({ PIPELINE_BYTES: "16384", SLOW_EVERY: "100" }, runtime);
      const client = await open(filter);
      const { reply, seen, replies } = await send(client, 10_000, [], 1024);
      expect(reply).toEqual({ action: "continue" });
      expect(replies.filter((r) => r.stage === "header").every((r) => r.reply.action === "noreply")).toBe(true);
      expect(seen).toMatchObject({ headers: 10_000, outOfOrder: 0, body: 1024, mail: "a@example.org" });
      // Bounded: never more than 16 KiB queued for the connection (each call is
      // far smaller), and libmilter had to wait for room: the MTA outran JS.
      expect(seen!.stats!.peakBytes).toBeLessThanOrEqual(16384);
      expect(seen!.stats!.peakBytes).toBeGreaterThan(8192);
      expect(seen!.stats!.waits).toBeGreaterThan(0);
      // eom ran after every queued call of the connection was done.
      expect(seen!.stats!.bytes).toBe(0);
      client.quit();
    },
    120_000,
  );
});

test("pipelineBytes 0: the same stages run while libmilter waits, with the same result", async () => {
  const filter = await start({ PIPELINE_BYTES: "0", SLOW_EVERY: "100" });
  const client = await open(filter);
  const { reply, seen } = await send(client, 2_000);
  expect(reply).toEqual({ action: "continue" });
  expect(seen).toMatchObject({ headers: 2_000, outOfOrder: 0, stats: null });
  client.quit();
});

describe("a pipelined callback's Ctx", () => {
  test("getsymval gives the macros of its own stage; setreply and actions are MilterErrors", async () => {
    const filter = await start();
    const client = await open(filter);
    const { reply, seen } = await send(client, 3, [["X-Probe", "x"]]);
    expect(reply).toEqual({ action: "continue" });
    const probe = seen!.probe!;
    expect(probe.mail).toEqual({ ok: "a@example.org" });
    expect(probe.i).toEqual({ ok: "Q1" });
    expect(probe.notKept.error).toMatch(/^Milter\.getsymval: the header callback is pipelined .*pipelineMacros/);
    expect(probe.setreply.error).toMatch(/^Milter\.setreply: the header callback is pipelined .*no reply follows/);
    expect(probe.addheader.error).toMatch(/^Milter\.addheader: only allowed in eom, not in header/);
    client.quit();
  });
});

describe("failures of pipelined callbacks are answered 451 4.3.0 at end of message", () => {
  let filter: FilterProcess;
  test.each([
    ["X-Throw", "exception", "header failed"],
    ["X-Reject", "bad-return", "NR_HDR"],
    ["X-Async-Reject", "exception", "async header failed"],
    ["X-Never", "timeout", "callbackTimeout"],
  ])("%s", async (name, kind, text) => {
    filter ??= await start({ CALLBACK_TIMEOUT: "0.5" });
    const client = await open(filter);
    const failed = await send(client, 5, [[name, "x"], ["X-After", "n:6"]]);
    expect(failed.reply).toEqual(FAILED_REPLY);
    const reported = await filter.waitFor((e) => e.event === "reported" && String(e.message).includes(text));
    expect(reported).toMatchObject({ cb: "header", kind });
    // The connection goes on: its next message is the filter's again.
    const next = await send(client, 5);
    expect(next.reply).toEqual({ action: "continue" });
    expect(next.seen).toMatchObject({ headers: 5, outOfOrder: 0 });
    client.quit();
  });
});

describe("thenables that are not Promises", () => {
  test("one that settles and then throws counts as settled; the filter stays up", async () => {
    const filter = await start();
    const client = await open(filter);
    const { reply, seen } = await send(client, 3, [["X-Then-Throw-After", "x"], ["X-After", "n:4"]]);
    expect(reply).toEqual({ action: "continue" });
    expect(seen).toMatchObject({ headers: 5, outOfOrder: 0 });
    expect((await send(client, 2)).reply).toEqual({ action: "continue" });
    client.quit();
  });

  test("one whose then() throws is a failure, answered 451 at end of message", async () => {
    const filter = await start({ CALLBACK_TIMEOUT: "0.5" });
    const client = await open(filter);
    expect((await send(client, 3, [["X-Then-Throw", "x"]])).reply).toEqual(FAILED_REPLY);
    await filter.waitFor((e) => e.event === "reported" && e.message === "thenable then() threw");
    // Past callbackTimeout nothing of that call comes back: a later call left to time out has its
    // timer fire after the first call's would have, and the filter serves the message after it.
    expect((await send(client, 1, [["X-Never", "x"]])).reply).toEqual(FAILED_REPLY);
    await filter.waitFor((e) => e.event === "reported" && e.kind === "timeout");
    expect((await send(client, 2)).reply).toEqual({ action: "continue" });
    client.quit();
  });

  test("5,000 that settle inside then(), queued behind one pending Promise, run in order", async () => {
    const filter = await start();
    const client = await open(filter);
    const syncs = Array.from({ length: 5_000 }, (_, i): [string, string] => ["X-Sync", `n:${i + 1}`]);
    const { reply, seen } = await send(client, 0, [["X-Wait", "n:0"], ...syncs], 1024);
    expect(reply).toEqual({ action: "continue" });
    expect(seen).toMatchObject({ headers: 5_001, outOfOrder: 0 });
    client.quit();
  }, 60_000);
});

test("async pipelined callbacks keep their connection's order", async () => {
  const filter = await start({ SLOW_EVERY: "1" });
  const client = await open(filter);
  const { reply, seen } = await send(client, 200, [["X-Wait", "x"]]);
  expect(reply).toEqual({ action: "continue" });
  expect(seen).toMatchObject({ headers: 201, outOfOrder: 0 });
  client.quit();
});

test("a connection whose pipelined callback is pending holds no other connection", async () => {
  const filter = await start({ CALLBACK_TIMEOUT: "3" });
  const stuck = await open(filter);
  const held = send(stuck, 3, [["X-Never", "x"]]);
  const other = await open(filter);
  const started = Date.now();
  const quick = await send(other, 50);
  expect(quick.reply).toEqual({ action: "continue" });
  expect(Date.now() - started).toBeLessThan(2_000);
  expect((await held).reply).toEqual(FAILED_REPLY);
  stuck.quit();
  other.quit();
});

test("an aborted message's queued calls run before abort; the next message starts clean", async () => {
  const filter = await start();
  const client = await open(filter);
  await client.envfrom("<a@example.org>");
  await client.envrcpt("<b@example.net>");
  await client.data();
  for (let i = 0; i < 100; i++) await client.header("X-N", `n:${i}`);
  client.abort();
  const { reply, seen } = await send(client, 4);
  expect(reply).toEqual({ action: "continue" });
  expect(seen).toMatchObject({ headers: 4, outOfOrder: 0 });
  client.quit();
});

test("after QUIT_NC the next session on the connection is pipelined under the same negotiation", async () => {
  const filter = await start();
  const client = await open(filter);
  expect((await send(client, 3)).reply).toEqual({ action: "continue" });
  client.quitNc();
  await client.connect("second.example", null);
  const second = await send(client, 30);
  expect(second.reply).toEqual({ action: "continue" });
  expect(second.seen).toMatchObject({ headers: 30, outOfOrder: 0 });
  expect(second.seen!.stats!.connections).toBe(1); // the shim pipelines it again
  client.quit();
});

test("closed connections leave no pipelining state behind", async () => {
  const filter = await start();
  for (let i = 0; i < 20; i++) {
    const client = await open(filter);
    await send(client, 10);
    client.quit();
  }
  const last = await open(filter);
  const { seen } = await send(last, 1);
  // Only the connection asking is left; the 20 before it were forgotten at close.
  expect(seen!.stats).toMatchObject({ connections: 1, bytes: 0 });
  last.quit();
});
