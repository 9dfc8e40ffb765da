/**
 * `milter-test proxy` and `milter-test replay` (and the same in
 * `@milterjs/milter/testing`): a session recorded through the proxy, with
 * several messages, an abort and QUIT, is what the client saw without it;
 * replayed against the same filter it matches, against a changed one it
 * reports exactly the change, and `--update` rewrites it.
 */

import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, test } from "vitest";
import { main } from "../src/testing/cli.ts";
import { loadRecording, type MessageResult, MilterClient, type Proxy, replay, startProxy } from "../src/testing/mod.ts";
import { type FilterProcess, killAll, script, startFilter } from "./helpers/filter.ts";
import { command, ROOT, RUNTIMES } from "./helpers/runtimes.ts";
import { spawn } from "node:child_process";

const proxies: Proxy[] = [];
afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});
afterAll(killAll);

function rules(tag: string, reject = "spam"): string {
  const path = join(mkdtempSync(join(tmpdir(), "milter-rules-")), "rules.json");
  writeFileSync(path, JSON.stringify({ tag, reject }));
  return path;
}

const filterWith = (tag: string, reject?: string): Promise<FilterProcess> =>
  startFilter({ fixture: "operations.ts", env: { RULES: rules(tag, reject) } });

/** The CLI with its output captured. */
async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const code = await main(argv, {
    stdout: (t) => out += t,
    stderr: (t) => err += t,
    readStdin: () => Promise.resolve(new Uint8Array()),
  });
  return { code, out, err };
}

/** One session: two messages (the second with a refused recipient), an aborted third, QUIT. */
async function session(spec: string): Promise<MessageResult[]> {
  const client = await MilterClient.open(spec);
  await client.connect("client.example", null, { _: "client.example [192.0.2.7]" });
  await client.helo("client.example");
  const send = (qid: string, rcpt: string[]) =>
    client.message(
      { from: "<a@example.org>", rcpt, headers: [["Subject", "hi"], ["X-Raw", " leading space"]], body: "x\r\n" },
      { envrcpt: { i: qid }, eom: { i: qid } },
    );
  const results = [await send("Q1", ["<b@example.net>"]), await send("Q2", ["<spam@example.net>", "<c@example.net>"])];
  await client.envfrom("<a@example.org>", []);
  await client.envrcpt("<d@example.net>", [], { i: "Q3" });
  client.abort();
  client.quit();
  await client.closed();
  return results;
}

async function recorded(dir: string): Promise<string> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const files = readdirSync(dir).filter((f) => f.endsWith(".json"));
    if (files.length > 0) return join(dir, files[0]);
    if (Date.now() > deadline) throw new Error(`no recording in ${dir}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("through the proxy the client sees what it sees without it, and the session is recorded", async () => {
  const filter = await filterWith("A");
  const direct = await session(filter.spec);
  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `unix:${join(dir, "in.sock")}`;
  proxies.push(await startProxy({ listen, to: filter.spec, record: join(dir, "sessions") }));
  const proxied = await session(listen);
  const strip = (rs: MessageResult[]) => rs.map((r) => ({ replies: r.replies, modifications: r.modifications }));
  expect(strip(proxied)).toEqual(strip(direct));

  const recording = loadRecording(await recorded(join(dir, "sessions")));
  expect(recording).toMatchObject({ format: "milter-recording", version: 1, end: "quit" });
  const names = recording.frames.map((f) => `${f.from}:${f.name}`);
  expect(names[0]).toBe("mta:negotiate");
  expect(names[1]).toBe("filter:negotiate");
  expect(names).toContain("mta:abort");
  expect(names.at(-1)).toBe("mta:quit");
  // The macros as the MTA sent them, with their stage; connect and the headers are not sent (the filter asked
  // NOCONNECT and NOHDRS).
  expect(recording.frames.find((f) => f.name === "macros")!.summary).toEqual({ stage: "R", macros: { i: "Q1" } });
  expect(names).not.toContain("mta:connect");
  expect(names).not.toContain("mta:header");
  expect(recording.frames.filter((f) => f.name === "addheader").map((f) => f.summary)).toEqual([
    { type: "addheader", name: "X-Rules", value: "A/A" },
    { type: "addheader", name: "X-Rules", value: "A/A" },
  ]);
  expect(recording.frames.find((f) => f.name === "replycode")!.summary).toBe("550 5.7.1 no spam here");
  for (const [i, f] of recording.frames.entries()) {
    if (i > 0) expect(f.t).toBeGreaterThanOrEqual(recording.frames[i - 1].t);
  }
});

test("replay: the same filter answers the same (exit 0); a changed one differs exactly where it changed (exit 1)", async () => {
  const original = await filterWith("A");
  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `unix:${join(dir, "in.sock")}`;
  proxies.push(await startProxy({ listen, to: original.spec, record: join(dir, "sessions") }));
  await session(listen);
  const file = await recorded(join(dir, "sessions"));

  const same = await cli("replay", file, "--to", original.spec);
  expect(same).toMatchObject({ code: 0, err: "" });
  expect(same.out).toContain(`same ${file}`);

  const changed = await filterWith("B");
  const differs = await cli("replay", join(dir, "sessions"), "--to", changed.spec);
  expect(differs.code).toBe(1);
  expect(differs.out).toContain(`differs ${file}`);
  const diff = differs.out.split("\n").filter((l) => l.startsWith("  ") || l.endsWith(":"))
    .map((l) => l.replace(/command \d+/, "command N"));
  expect(diff).toEqual([
    "eom (command N):",
    '  - addheader {"type":"addheader","name":"X-Rules","value":"A/A"}',
    '  + addheader {"type":"addheader","name":"X-Rules","value":"B/B"}',
    "eom (command N):",
    '  - addheader {"type":"addheader","name":"X-Rules","value":"A/A"}',
    '  + addheader {"type":"addheader","name":"X-Rules","value":"B/B"}',
  ]);

  // --update rewrites the recording from the new answers; it then matches the changed filter.
  expect((await cli("replay", file, "--to", changed.spec, "--update")).out).toContain(`updated ${file}`);
  expect((await cli("replay", file, "--to", changed.spec)).code).toBe(0);
  expect(readFileSync(file, "utf8")).toContain("B/B");
});

test("in a test, three lines: load a recording, replay it, expect it to match", async () => {
  const filter = await filterWith("A");
  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `unix:${join(dir, "in.sock")}`;
  proxies.push(await startProxy({ listen, to: filter.spec, record: dir }));
  await session(listen);
  const path = await recorded(dir);

  const result = await replay(loadRecording(path), filter.spec);
  expect(result.differences).toEqual([]);
  expect(result.matches).toBe(true);
});

test("a filter that drops the connection mid-session: recorded up to there, and the MTA side sees the drop", async () => {
  const filter = await filterWith("A");
  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `unix:${join(dir, "in.sock")}`;
  proxies.push(await startProxy({ listen, to: filter.spec, record: dir }));
  const client = await MilterClient.open(listen);
  await client.connect("client.example", null);
  await filter.signal("SIGKILL");
  await expect(
    client.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "x\r\n" }),
  ).rejects.toThrow(/closed/);
  const recording = loadRecording(await recorded(dir));
  expect(recording.end).toBe("filter");
  expect(recording.frames.map((f) => f.name).slice(0, 2)).toEqual(["negotiate", "negotiate"]);
});

test("a recording stops at --max-bytes and says so; the session goes on", async () => {
  const filter = await filterWith("A");
  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `unix:${join(dir, "in.sock")}`;
  const notes: string[] = [];
  proxies.push(await startProxy({ listen, to: filter.spec, record: dir, maxBytes: 300, onNote: (l) => notes.push(l) }));
  const client = await MilterClient.open(listen);
  await client.connect("client.example", null);
  const result = await client.message({
    from: "<a@example.org>",
    rcpt: Array.from({ length: 20 }, (_, i) => `<b${i}@example.net>`),
    headers: [["Subject", "big"]],
    body: "x\r\n",
  });
  expect(result.modifications).toEqual([{ type: "addheader", name: "X-Rules", value: "A/A" }]);
  client.quit();
  const recording = loadRecording(await recorded(dir));
  expect(recording.end).toBe("limit");
  expect(notes).toEqual([expect.stringContaining("passed 300 bytes; its recording stops there")]);
});

describe.each(RUNTIMES)("the CLI under %s", (runtime) => {
  /** `milter-test <args>` under the runtime: its exit code and output. */
  function run(
    args: string[],
  ): { done: Promise<{ code: number | null; out: string; err: string }>; stop: () => void; out: () => string } {
    const [cmd, pre] = command(runtime, join(ROOT, "bin/milter-test.ts"));
    const child = spawn(cmd, [...pre, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    child.stdout.setEncoding("utf8").on("data", (t: string) => out += t);
    child.stderr.setEncoding("utf8").on("data", (t: string) => err += t);
    return {
      done: new Promise((resolve) => child.once("close", (code) => resolve({ code, out, err }))),
      stop: () => child.kill("SIGTERM"),
      out: () => out,
    };
  }

  test("proxy records a session until SIGTERM; replay finds it the same (exit 0)", async () => {
    const filter = await filterWith("A");
    const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
    const listen = `unix:${join(dir, "in.sock")}`;
    const proxy = run(["proxy", "--listen", listen, "--to", filter.spec, "--record", join(dir, "sessions")]);
    await expect.poll(proxy.out, { timeout: 30_000 }).toContain("milter-test proxy:");
    await session(listen);
    await expect.poll(proxy.out, { timeout: 10_000 }).toContain("recorded ");
    proxy.stop();
    expect(await proxy.done).toMatchObject({ code: 0 });
    const replayed = await run(["replay", join(dir, "sessions"), "--to", filter.spec]).done;
    expect(replayed).toMatchObject({ code: 0, err: "" });
    expect(replayed.out).toContain("1 recording(s), 0 with differences");
  });
});

test("--ignore-macro i: the replay sends a fresh queue id, and answers that carry it still match", async () => {
  // The README's filter stamps each message with its queue id.
  const filter = await startFilter({ fixture: "round-trips.ts" });
  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `unix:${join(dir, "in.sock")}`;
  proxies.push(await startProxy({ listen, to: filter.spec, record: dir }));
  const client = await MilterClient.open(listen);
  const result = await client.message(
    { from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [["Subject", "hi"]], body: "x\r\n" },
    { envrcpt: { i: "QRECORDED1" }, eom: { i: "QRECORDED1" } },
  );
  expect(result.modifications).toEqual([{ type: "addheader", name: "X-Stamped", value: "yes, queue id QRECORDED1" }]);
  client.quit();
  const file = await recorded(dir);

  expect((await cli("replay", file, "--to", filter.spec)).code).toBe(0); // the recorded id, the same answer
  const fresh = await replay(loadRecording(file), filter.spec, { ignoreMacros: ["i"] });
  expect(fresh.differences).toEqual([]);
  const stamp = fresh.updated.frames.find((f) => f.name === "addheader")!.summary as { value: string };
  expect(stamp.value).toMatch(/^yes, queue id [0-9A-Z]{10}$/);
  expect(stamp.value).not.toContain("QRECORDED1"); // the filter saw another id, masked in the comparison
  expect((await cli("replay", file, "--to", filter.spec, "--ignore-macro", "{i}")).code).toBe(0);
});

test("the CLI sends several messages on one connection: ABORT between them, or QUIT_NC with --quit-nc", async () => {
  const filter = await startFilter({ fixture: "operations.ts", env: { RULES: rules("A"), LOG: "fn" } });
  const dir = mkdtempSync(join(tmpdir(), "milter-cli-"));
  const eml = (name: string, to: string): string => {
    const path = join(dir, name);
    writeFileSync(path, `From: a@example.org\nTo: ${to}\nSubject: ${name}\n\nHello.\n`);
    return path;
  };
  const first = eml("first.eml", "b@example.net"), second = eml("second.eml", "r@example.net");
  const run = await cli(filter.spec, first, second, "--macro", "envrcpt:i=QMULTI");
  expect(run.code).toBe(2); // the second was rejected: the first verdict that is not accepted
  expect(run.out).toContain(`message 1 (${first}):`);
  expect(run.out).toContain(`message 2 (${second}):`);
  expect(run.out.match(/^verdict: \w+$/gm)).toEqual(["verdict: accepted", "verdict: rejected"]);
  await filter.waitFor((e) => e.event === "log" && e.kind === "message" && e.verdict === "reject");
  const [one, two] = filter.events.filter((e) => e.event === "log" && e.kind === "message");
  expect(one.connection).toBe(two.connection); // one SMTP session, ABORT between the messages

  const json = await cli(filter.spec, first, second, "--json", "--quit-nc");
  expect(json.code).toBe(2);
  const reports = JSON.parse(json.out) as { verdict: string; replies: { stage: string }[] }[];
  expect(reports.map((r) => r.verdict)).toEqual(["accepted", "rejected"]);
  expect(reports.map((r) => r.replies[0].stage)).toEqual(["connect", "connect"]); // a session each
  await expect.poll(() => filter.events.filter((e) => e.event === "log" && e.kind === "message").length).toBe(4);
  const [three, four] = filter.events.filter((e) => e.event === "log" && e.kind === "message").slice(2);
  expect(three.connection).not.toBe(four.connection); // QUIT_NC: a new session on the same milter connection
});

test("transparent to what libmilter does: no-reply headers, SKIP, progress, quarantine, QUIT_NC, all recorded and replayed", async () => {
  const filter = await startFilter({
    env: {
      FLAGS: "ADDHDRS,QUARANTINE",
      NEGOTIATE: JSON.stringify({ result: ["Continue", ["ADDHDRS", "QUARANTINE"], ["NR_HDR", "SKIP"]] }),
    },
  });
  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `unix:${join(dir, "in.sock")}`;
  proxies.push(await startProxy({ listen, to: filter.spec, record: dir }));
  // The scripted filter reads its instructions from macros sent with MAIL.
  const macros = {
    envfrom: script({
      body: { stat: "Skip" },
      eom: { actions: [["progress"], ["quarantine", "held for review"], ["addheader", "X-Seen", "1"]] },
    }),
  };
  const input = {
    from: "<a@example.org>",
    rcpt: ["<b@example.net>"],
    headers: [["Subject", "one"], ["X-Two", "two"]] as [string, string][],
    body: "x".repeat(70_000), // two chunks: the second is not sent after SKIP
  };
  const run = async (spec: string) => {
    const client = await MilterClient.open(spec);
    await client.connect("client.example", null);
    const first = await client.message(input, macros);
    client.quitNc(); // a next SMTP session on the same milter connection
    await client.connect("client2.example", null);
    const second = await client.message(input, macros);
    client.quit();
    await client.closed();
    return [first, second].map((r) => ({ replies: r.replies, modifications: r.modifications }));
  };
  const direct = await run(filter.spec);
  const proxied = await run(listen);
  expect(proxied).toEqual(direct);
  expect(direct[0].replies.filter((r) => r.stage === "header").map((r) => r.reply.action)).toEqual([
    "noreply",
    "noreply",
  ]);
  expect(direct[0].modifications).toEqual([
    { type: "progress" },
    { type: "quarantine", reason: "held for review" },
    { type: "addheader", name: "X-Seen", value: "1" },
  ]);

  const recording = loadRecording(await recorded(dir));
  const names = recording.frames.map((f) => `${f.from}:${f.name}`);
  expect(names.filter((n) => n === "mta:body")).toHaveLength(2); // one chunk each message
  for (const n of ["filter:skip", "filter:progress", "filter:quarantine", "mta:quit_nc"]) expect(names).toContain(n);
  expect(recording.end).toBe("quit");
  expect((await replay(recording, filter.spec)).differences).toEqual([]);
});

test("an MTA that drops the connection mid-message: recorded up to there, and the filter sees the drop", async () => {
  const filter = await startFilter({ fixture: "operations.ts", env: { RULES: rules("A"), LOG: "fn" } });
  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `unix:${join(dir, "in.sock")}`;
  proxies.push(await startProxy({ listen, to: filter.spec, record: dir }));
  const client = await MilterClient.open(listen);
  await client.envfrom("<a@example.org>", []);
  await client.envrcpt("<b@example.net>", [], { i: "QDROP" });
  client.close(); // no QUIT: the MTA side just goes away
  // The filter saw its connection close with the message open.
  const entry = await filter.waitFor((e) => e.event === "log" && e.queueId === "QDROP");
  expect(entry).toMatchObject({ verdict: "aborted", recipients: 1 });
  const recording = loadRecording(await recorded(dir));
  expect(recording.end).toBe("mta");
  expect(recording.frames.map((f) => `${f.from}:${f.name}`).slice(-2)).toEqual(["mta:envrcpt", "filter:continue"]);
});
