/**
 * Every example in examples/, run as its README says (one process, its
 * socket from MILTER_SOCKET) and driven as an MTA would drive it.
 */

import { execFileSync, spawn, spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { afterAll, afterEach, describe, expect, test } from "vitest";
import type { MilterClient, Reply } from "../src/testing/mod.ts";
import { Step } from "../mod.ts";
import { type FilterProcess, killAll, startFilter } from "./helpers/filter.ts";
import { command, ROOT, type Runtime } from "./helpers/runtimes.ts";

const dir = mkdtempSync(join(tmpdir(), "milter-examples-"));
afterEach(killAll);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function example(name: string, env: Record<string, string> = {}, runtime?: Runtime): Promise<FilterProcess> {
  return startFilter({ fixture: `../../examples/${name}.ts`, readyWhen: "listening", env, runtime });
}

/**
 * Starts an example that must refuse its settings: resolves with its exit
 * code and stderr once it exits (a filter that starts listening instead
 * never exits, and fails the test at its timeout).
 */
function refused(name: string, env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const [cmd, args] = command("node", join(ROOT, `examples/${name}.ts`));
  const spec = `unix:${join(dir, `${name}-refused.sock`)}`;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, MILTER_SOCKET: spec, ...env } });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (text: string) => stderr += text);
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stderr }));
  });
}

/** A setting refused: exit code 78 and one line naming it, no stack trace. */
function expectRefusal(result: { code: number | null; stderr: string }, ...mentions: string[]): void {
  expect(result.code).toBe(78);
  expect(result.stderr.trimEnd().split("\n")).toHaveLength(1);
  for (const text of mentions) expect(result.stderr).toContain(text);
}

/** A client past connect and HELO. */
async function session(filter: FilterProcess, helo = "client.example"): Promise<MilterClient> {
  const client = await filter.client();
  await client.connect("client.example", { family: "inet", address: "192.0.2.7", port: 4711 });
  await client.helo(helo);
  return client;
}

const message = (overrides: Partial<{ from: string; rcpt: string[]; headers: [string, string][]; body: string }>) => ({
  from: "<alice@example.org>",
  rcpt: ["<bob@example.net>"],
  headers: [["From", "alice@example.org"], ["Subject", "hello"]] as [string, string][],
  body: "Hello.\r\n",
  ...overrides,
});

describe("stamp", () => {
  test("adds its header with the client's name and address, and asks the MTA to skip the rest", async () => {
    const client = await session(await example("stamp"));
    expect(client.negotiated.steps).toEqual(expect.arrayContaining(["NOHELO", "NOMAIL", "NORCPT", "NOHDRS", "NOBODY"]));
    const result = await client.message(message({}));
    expect(result.reply.action).toBe("continue");
    expect(result.modifications).toEqual([
      { type: "addheader", name: "X-Filtered-By", value: "stamp; from client.example [192.0.2.7]" },
    ]);
    client.quit();
  });
  test.each(["deno", "bun"] as const)("runs the same under %s", async (runtime) => {
    const client = await session(await example("stamp", {}, runtime));
    expect((await client.message(message({}))).modifications).toEqual([
      { type: "addheader", name: "X-Filtered-By", value: "stamp; from client.example [192.0.2.7]" },
    ]);
    client.quit();
  });
});

describe("collect", () => {
  const many = (n: number, subject = "hello"): [string, string][] => [
    ["Subject", subject],
    ...Array.from({ length: n - 1 }, (_, i): [string, string] => [`X-Line-${i}`, `value ${i}`]),
  ];

  test("pipelines headers and body when the MTA offers NR_HDR and NR_BODY, and decides at end of message", async () => {
    const filter = await example("collect");
    const client = await session(filter);
    expect(client.negotiated.steps).toEqual(expect.arrayContaining(["NR_HDR", "NR_BODY"]));
    const result = await client.message(message({ headers: many(40), body: "x".repeat(70_000) }));
    expect(result.replies.filter((r) => r.stage === "header").map((r) => r.reply.action)).toEqual(
      Array(40).fill("noreply"),
    );
    expect(result.modifications).toEqual([
      { type: "addheader", name: "X-Collected", value: "40 headers, 70000 body bytes" },
    ]);
    const spam = await client.message(message({ headers: many(3, "FREE MONEY now") }));
    expect(spam.reply).toMatchObject({ action: "replycode", smtpCode: 554, text: "554 5.7.1 message refused as spam" });
    client.quit();
  });

  test("runs unpipelined, with the same result, for an MTA that offers no no-reply steps", async () => {
    const filter = await example("collect");
    const client = await filter.client({ steps: Object.values(Step).filter((step) => !step.startsWith("NR_")) });
    await client.connect("client.example", { family: "inet", address: "192.0.2.7", port: 4711 });
    expect(client.negotiated.steps).not.toContain("NR_HDR");
    const result = await client.message(message({ headers: many(5) }));
    expect(result.replies.filter((r) => r.stage === "header").map((r) => r.reply.action)).toEqual(
      Array(5).fill("continue"),
    );
    expect(result.modifications).toEqual([
      { type: "addheader", name: "X-Collected", value: "5 headers, 8 body bytes" },
    ]);
    client.quit();
  });

  test.each(["deno", "bun"] as const)("runs the same under %s", async (runtime) => {
    const client = await session(await example("collect", {}, runtime));
    const result = await client.message(message({ headers: many(25) }));
    expect(result.modifications).toEqual([
      { type: "addheader", name: "X-Collected", value: "25 headers, 8 body bytes" },
    ]);
    client.quit();
  });
});

describe("alias", () => {
  test("replaces aliased recipients by their targets and leaves the others", async () => {
    const aliases = join(dir, "aliases.json");
    writeFileSync(aliases, JSON.stringify({ "sales@example.org": ["alice@example.org", "bob@example.org"] }));
    const client = await session(await example("alias", { ALIASES: aliases }));
    const result = await client.message(message({ rcpt: ["<Sales@Example.org>", "<carol@example.org>"] }));
    expect(result.modifications).toEqual([
      { type: "delrcpt", rcpt: "<Sales@Example.org>" },
      { type: "addrcpt", rcpt: "<alice@example.org>" },
      { type: "addrcpt", rcpt: "<bob@example.org>" },
    ]);
    const plain = await client.message(message({ rcpt: ["<carol@example.org>"] }));
    expect(plain.modifications).toEqual([]); // the previous message's list does not leak into this one
    client.quit();
  });

  test.each([
    ["a string where a list belongs", { "sales@example.org": "alice@example.org" }, '"sales@example.org"', "list"],
    ["an empty list", { "sales@example.org": [] }, '"sales@example.org"', "non-empty list"],
    ["a target that is no address", { "sales@example.org": ["alice"] }, '"sales@example.org"', '"alice"'],
    ["a target that would break out of <>", { "s@example.org": ["a@x>\r\nRCPT"] }, '"s@example.org"', "not an address"],
    ["a key that is no address", { "<sales@example.org>": ["a@example.org"] }, '"<sales@example.org>"', "address"],
    ["a key given twice", { "s@example.org": ["a@x.org"], "S@Example.org": ["b@x.org"] }, '"S@Example.org"', "twice"],
    ["a list, not an object", [["s@example.org", ["a@x.org"]]], "aliases.json", "JSON object"],
  ])("a table with %s stops the filter at start, naming the key", async (_name, table, key, why) => {
    const aliases = join(dir, "aliases.json");
    writeFileSync(aliases, JSON.stringify(table));
    expectRefusal(await refused("alias", { ALIASES: aliases }), key, why);
  });

  test("a file that is not JSON, or is missing, stops the filter with one line, not a stack", async () => {
    const broken = join(dir, "broken.json");
    writeFileSync(broken, '{"sales@example.org": ["alice@example.org"');
    expectRefusal(await refused("alias", { ALIASES: broken }), "broken.json is not JSON");
    expectRefusal(await refused("alias", { ALIASES: join(dir, "absent.json") }), "cannot read", "absent.json");
  });
});

describe("rules", () => {
  const last = (replies: { stage: string; reply: Reply }[]): { stage: string; reply: Reply } => replies.at(-1)!;

  test("a refused HELO gets the rule's 550", async () => {
    const filter = await example("rules");
    const client = await filter.client();
    await client.connect("client.example", null);
    expect(await client.helo("localhost")).toEqual({
      action: "replycode",
      smtpCode: 550,
      text: "550 5.7.1 localhost is not a valid host name for this server",
    });
    client.quit();
  });

  test.each([
    [
      "a refused sender",
      { from: "<x@spam.example>" },
      "envfrom",
      "550 5.7.1 mail from <x@spam.example> is not accepted here",
    ],
    [
      "a refused subject",
      { headers: [["Subject", "Cheap pills today"]] as [string, string][] },
      "header",
      "554 5.7.1 message refused: subject matches our content policy",
    ],
    ["a tempfailed bounce", { from: "<>" }, "envfrom", "451 4.7.1 bounces are not accepted right now, try again later"],
  ])("%s", async (_name, overrides, stage, text) => {
    const client = await session(await example("rules"));
    const result = await client.message(message(overrides));
    expect(last(result.replies)).toEqual({
      stage,
      reply: { action: "replycode", smtpCode: Number(text.slice(0, 3)), text },
    });
    client.quit();
  });

  test("mail that matches no rule goes through", async () => {
    const client = await session(await example("rules"));
    expect((await client.message(message({}))).reply.action).toBe("continue");
    client.quit();
  });

  const REFUSED_SUBJECT = "554 5.7.1 message refused: subject matches our content policy";
  /** The last reply to a message with this Subject, on a new connection of `filter`. */
  async function subject(filter: FilterProcess, value: string): Promise<string | undefined> {
    const client = await session(filter);
    const result = await client.message(message({ headers: [["Subject", value]] }));
    client.quit();
    return result.reply.text ?? result.reply.action;
  }

  test("the subject rule matches the subject as a reader sees it, however it is written", async () => {
    const filter = await example("rules");
    const forms = {
      folded: "Cheap\n pills today",
      "folded with CRLF, as Sendmail sends it": "Cheap\r\n\tpills",
      "with a double space": "Cheap  pills",
      "as a base64 encoded word": "=?UTF-8?B?Q2hlYXAgcGlsbHM=?=",
      "as Q encoded words split across a fold": "=?utf-8?Q?Ch?=\n =?utf-8?Q?eap=20?= pills",
      "with a no-break space": "=?UTF-8?Q?Cheap=C2=A0pills?=",
      "with a zero-width space": "Cheap \u200bpills",
      "in full-width letters": "Ｃｈｅａｐ ｐｉｌｌｓ",
    };
    for (const [form, value] of Object.entries(forms)) {
      expect(await subject(filter, value), form).toBe(REFUSED_SUBJECT);
    }
    // and decoding makes no match of what does not say it
    expect(await subject(filter, "=?UTF-8?B?Q2hlYXAgcGlsbG93cw==?=")).toBe("continue"); // "Cheap pillows"
    expect(await subject(filter, "=?x-unknown?B?%%%?= pills")).toBe("continue");
  });

  test.each(["node", "deno", "bun"] as const)(
    "under %s, MILTER_RULES is read again on SIGHUP: new connections use it, a broken file changes nothing",
    async (runtime) => {
      const file = join(mkdtempSync(join(tmpdir(), "milter-rules-")), "rules.json");
      const rule = (helo: string): string =>
        JSON.stringify([{ on: "helo", match: `^${helo}$`, reply: ["550", "5.7.1", "not %s"] }]);
      writeFileSync(file, rule("first\\.example"));
      const filter = await example("rules", { MILTER_RULES: file }, runtime);
      const heloOf = async (name: string): Promise<string | undefined> => {
        const client = await filter.client();
        await client.connect("client.example", null);
        const reply = await client.helo(name);
        client.quit();
        return reply.text ?? reply.action;
      };
      expect(await heloOf("first.example")).toBe("550 5.7.1 not first.example");
      const open = await filter.client(); // started on the first rules, it keeps them
      await open.connect("client.example", null);
      writeFileSync(file, rule("second\\.example"));
      filter.child.kill("SIGHUP");
      await expect.poll(() => heloOf("second.example"), { timeout: 10_000 }).toBe("550 5.7.1 not second.example");
      expect(await heloOf("first.example")).toBe("continue");
      expect((await open.helo("first.example")).text).toBe("550 5.7.1 not first.example");
      open.quit();
      writeFileSync(file, "[{");
      filter.child.kill("SIGHUP");
      await expect.poll(() => filter.stderr, { timeout: 10_000 }).toContain("reload on SIGHUP failed");
      expect(await heloOf("second.example")).toBe("550 5.7.1 not second.example");
      expect(filter.child.exitCode).toBe(null);
    },
  );

  test("a MILTER_RULES file that is not rules stops it at start with exit code 78", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "milter-rules-")), "rules.json");
    writeFileSync(file, JSON.stringify([{ on: "body", match: "x", reply: ["550", "5.7.1", "x"] }]));
    expectRefusal(
      await refused("rules", { MILTER_RULES: file }),
      "MILTER_RULES",
      '"on" must be helo, sender or subject',
    );
  });

  test.each(["deno", "bun"] as const)("runs the same under %s, npm package included", async (runtime) => {
    const filter = await example("rules", {}, runtime);
    expect(await subject(filter, "=?UTF-8?B?Q2hlYXAgcGlsbHM=?=")).toBe(REFUSED_SUBJECT);
    expect(await subject(filter, "hello")).toBe("continue");
  });
});

describe("attachments", () => {
  const multipart = (filenameLines: string[]): string =>
    [
      "This is a MIME message.",
      "--b1",
      "Content-Type: text/plain",
      "",
      "See the attachment. The word filename=evil.exe in text is not an attachment.",
      "--b1",
      "Content-Type: application/octet-stream",
      ...filenameLines,
      "Content-Transfer-Encoding: base64",
      "",
      "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
      "--b1--",
      "",
    ].join("\r\n");
  const headers: [string, string][] = [["Subject", "invoice"], ["Content-Type", 'multipart/mixed; boundary="b1"']];

  /** Pushes a message with its body cut into 7-byte chunks, so that lines straddle chunks. */
  async function push(client: MilterClient, body: string, top = headers): Promise<string[]> {
    await client.envfrom("<alice@example.org>");
    await client.envrcpt("<bob@example.net>");
    await client.data();
    for (const [name, value] of top) await client.header(name, value);
    await client.eoh();
    for (let at = 0; at < body.length; at += 7) await client.body(body.slice(at, at + 7));
    const result = await client.eom();
    return result.modifications.flatMap((m) => m.type === "quarantine" ? [m.reason] : []);
  }

  test("a blocked extension in a folded RFC 2231 file name, across chunk boundaries, is quarantined", async () => {
    const client = await session(await example("attachments"));
    const body = multipart(["Content-Disposition: attachment;", "\tfilename*=utf-8''invoice.pdf.exe"]);
    expect(await push(client, body)).toEqual(["blocked attachment invoice.pdf.exe"]);
    client.quit();
  });

  test("allowed attachments, and file names in the text, pass", async () => {
    const client = await session(await example("attachments"));
    expect(await push(client, multipart(['Content-Disposition: attachment; filename="invoice.pdf"']))).toEqual([]);
    // the next message on the same connection starts clean
    expect(await push(client, multipart(['Content-Type: application/x-msdownload; name="setup.EXE"']))).toEqual([
      "blocked attachment setup.EXE",
    ]);
    client.quit();
  });

  test("a single-part message names its file in the top-level headers", async () => {
    const client = await session(await example("attachments", { BLOCKED_EXTENSIONS: "iso" }));
    const top: [string, string][] = [["Content-Type", 'application/octet-stream; name="disk.iso"']];
    expect(await push(client, "AAAA\r\n", top)).toEqual(["blocked attachment disk.iso"]);
    client.quit();
  });

  /** The quarantine reasons of one message, its body sent as an MTA sends it (chunks of up to 64 KiB). */
  async function whole(client: MilterClient, body: string, top = headers): Promise<string[]> {
    const result = await client.message(message({ headers: top, body }));
    expect(result.reply.action).toBe("continue");
    return result.modifications.flatMap((m) => m.type === "quarantine" ? [m.reason] : []);
  }

  test("a name hidden by encoding is found however it is written", async () => {
    const client = await session(await example("attachments"));
    const forms = {
      "RFC 2231 continuations": ['Content-Disposition: attachment; filename*0="evil"; filename*1=".exe"'],
      "RFC 2231 continuations, percent-encoded": [
        "Content-Disposition: attachment;",
        " filename*0*=utf-8''ev%69l; filename*1*=.%45xe",
      ],
      "an RFC 2047 encoded word": ['Content-Disposition: attachment; filename="=?UTF-8?B?ZXZpbC5leGU=?="'],
      "a trailing dot": ['Content-Disposition: attachment; filename="evil.exe."'],
      "trailing dots and spaces": ['Content-Disposition: attachment; filename="evil.exe . "'],
      "a second Content-Type": ['Content-Type: application/x-msdownload; name="evil.exe"'],
      "Content-Type name, while the disposition names a PDF": [
        'Content-Disposition: attachment; filename="invoice.pdf"',
        'Content-Type: application/octet-stream; name="evil.exe"',
      ],
    };
    for (const [form, lines] of Object.entries(forms)) {
      expect(await whole(client, multipart(lines)), form).toEqual([
        expect.stringMatching(/^blocked attachment evil\.exe[ .]*$/i),
      ]);
    }
    client.quit();
  });

  test("a part-header line longer than a body chunk hides no name, before or after it", async () => {
    const client = await session(await example("attachments"));
    const pad = `x-pad="${"a".repeat(100_000)}"`; // over one 65,535-byte chunk, and the old 8 KiB carry
    for (const line of [`filename="evil.exe"; ${pad}`, `${pad}; filename="evil.exe"`]) {
      const reasons = await whole(client, multipart([`Content-Disposition: attachment; ${line}`]));
      expect(reasons).toEqual(["blocked attachment evil.exe"]);
    }
    client.quit();
  });

  test("a Latin-1 RFC 2231 name is decoded and passes (it threw URIError: 451 on every attempt)", async () => {
    const client = await session(await example("attachments"));
    const lines = ["Content-Disposition: attachment; filename*=iso-8859-1''r%E9sum%E9.pdf"];
    const result = await client.message(message({ headers, body: multipart(lines) }));
    expect(result.reply).toEqual({ action: "continue" });
    expect(result.modifications).toEqual([]);
    expect(await whole(client, multipart(["Content-Type: x/y; name*=iso-8859-1''d%E9j%E0.EXE"]))).toEqual([
      "blocked attachment déjà.EXE",
    ]);
    client.quit();
  });

  /** A message/rfc822 part (its header lines, an empty line, its content) holding `inner`. */
  const rfc822 = (inner: string, partHeaders: string[] = []): string =>
    ["Content-Type: message/rfc822", ...partHeaders, "", inner].join("\r\n");
  /** A message whose one part is `part`, under `boundary`. */
  const around = (part: string, boundary: string): string =>
    [
      `Subject: ${boundary}`,
      `Content-Type: multipart/mixed; boundary="${boundary}"`,
      "",
      `--${boundary}`,
      part,
      `--${boundary}--`,
      "",
    ]
      .join("\r\n");
  /** The quarantine reasons of a message whose one part is `part`. */
  const sendPart = (client: MilterClient, part: string): Promise<string[]> =>
    whole(client, `--b1\r\n${part}\r\n--b1--\r\n`);
  const ATTACHED = ["Content-Disposition: attachment"];

  test("a name in a forwarded message (message/rfc822) is found, attached, encoded or nested", async () => {
    const client = await session(await example("attachments"));
    const inner = ["Subject: fwd", 'Content-Type: a/b; name="x.js"', "", "x"].join("\r\n");
    const base64 = btoa(inner).replace(/.{76}/g, "$&\r\n");
    const forms = {
      inline: rfc822(inner, ["Content-Disposition: inline"]),
      "as an attachment": rfc822(inner, ATTACHED),
      "base64-encoded": rfc822(base64, [...ATTACHED, "Content-Transfer-Encoding: base64"]),
      "three deep": rfc822(around(rfc822(around(rfc822(inner, ATTACHED), "b3"), ATTACHED), "b2"), ATTACHED),
    };
    for (const [form, part] of Object.entries(forms)) {
      expect(await sendPart(client, part), form).toEqual(["blocked attachment x.js"]);
    }
    client.quit();
  });

  test("an attached message the parser refuses is quarantined too, at once", async () => {
    const client = await session(await example("attachments"));
    const filler = Array.from({ length: 20_000 }, (_, i) => `X-Filler-${i}: ${"f".repeat(60)}`).join("\r\n");
    const started = Date.now();
    const body = `${"b".repeat(76)}\r\n`.repeat(80_000); // 6 MB more after the header it refuses
    const reasons = await sendPart(client, rfc822(`Subject: inner\r\n${filler}\r\n\r\n${body}`, ATTACHED));
    expect(reasons).toEqual([expect.stringMatching(/^MIME structure not checked: .*header/i)]);
    expect(Date.now() - started).toBeLessThan(5000); // not the callback timeout
    client.quit();
  });

  test("messages attached more than 8 deep are quarantined unchecked", async () => {
    const client = await session(await example("attachments"));
    let part = rfc822("Subject: innermost\r\n\r\nhello", ATTACHED);
    for (let depth = 2; depth <= 10; depth++) part = rfc822(around(part, `b${depth}x`), ATTACHED);
    expect(await sendPart(client, part)).toEqual(["MIME structure not checked: messages attached more than 8 deep"]);
    client.quit();
  });

  test("a message the parser refuses (a part header over 1 MiB) is quarantined, not let through", async () => {
    const client = await session(await example("attachments"));
    const lines = Array.from({ length: 20_000 }, (_, i) => `X-Filler-${i}: ${"f".repeat(60)}`);
    const reasons = await whole(client, multipart([...lines, 'Content-Disposition: attachment; filename="a.pdf"']));
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toMatch(/^MIME structure not checked: .*header/i);
    client.quit();
  });

  test("a 20 MB message costs the filter no more memory than a small one", async () => {
    const filter = await example("attachments");
    const client = await session(filter);
    const peak = (): number =>
      Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${filter.child.pid}/status`, "utf8"))![1]) * 1024;
    expect(await whole(client, multipart(['Content-Disposition: attachment; filename="small.pdf"']))).toEqual([]);
    const before = peak();
    const line = "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n";
    const attachment = line.repeat(Math.ceil(20_000_000 / line.length));
    const body = multipart(['Content-Disposition: attachment; filename="big.pdf"']).replace(/TVqQ.*\r\n/, attachment);
    expect(await whole(client, body)).toEqual([]);
    expect(peak() - before).toBeLessThan(48 * 1024 * 1024); // the message itself is 20 MB
    client.quit();
  });

  test.each(["deno", "bun"] as const)("runs the same under %s, npm packages included", async (runtime) => {
    const client = await session(await example("attachments", {}, runtime));
    const lines = ['Content-Disposition: attachment; filename*0="evil"; filename*1=".exe"'];
    expect(await whole(client, multipart(lines))).toEqual(["blocked attachment evil.exe"]);
    expect(await whole(client, multipart(["Content-Disposition: attachment; filename*=iso-8859-1''r%E9sum%E9.pdf"])))
      .toEqual([]);
    client.quit();
  });
});

describe("ratelimit", () => {
  test("counts messages and recipients per connection, and a new connection starts afresh", async () => {
    const filter = await example("ratelimit", { MAX_MESSAGES: "2", MAX_RECIPIENTS: "3" });
    const client = await session(filter);
    const rcpts = ["<a@example.net>", "<b@example.net>", "<c@example.net>", "<d@example.net>"];
    const first = await client.message(message({ rcpt: rcpts }));
    expect(first.replies.filter((r) => r.stage === "envrcpt").map((r) => r.reply.smtpCode ?? r.reply.action)).toEqual([
      "continue",
      "continue",
      "continue",
      452,
    ]);
    expect(first.reply.action).toBe("continue");
    expect((await client.message(message({}))).reply.action).toBe("continue");
    const third = await client.message(message({}));
    expect(third.reply).toEqual({
      action: "replycode",
      smtpCode: 451,
      text: "451 4.7.1 at most 2 messages per connection; reconnect and retry",
    });
    client.quit();
    const fresh = await session(filter);
    expect((await fresh.message(message({}))).reply.action).toBe("continue");
    fresh.quit();
  });

  test.each(["5O", "1e3", "0", ""])(
    "MAX_RECIPIENTS=%j stops the filter at start instead of letting every recipient through",
    async (value) => {
      expectRefusal(await refused("ratelimit", { MAX_RECIPIENTS: value }), `MAX_RECIPIENTS=${JSON.stringify(value)}`);
    },
  );
});

describe("the systemd unit", () => {
  const unit = readFileSync(join(ROOT, "examples/milter-rules.service"), "utf8");
  /** The value of `key=` in the unit (the last, as systemd takes it for a single-valued key). */
  const setting = (key: string): string => [...unit.matchAll(new RegExp(`^${key}=(.*)$`, "gm"))].at(-1)![1];

  /** What `systemd-analyze verify` says of a unit file (it exits 0 even on unknown keys). */
  const verify = (text: string): string => {
    const file = join(dir, "milter-rules.service");
    writeFileSync(file, text);
    execFileSync("systemd-analyze", ["--version"]); // fails the test when systemd is missing
    return spawnSync("systemd-analyze", ["verify", file], { encoding: "utf8" }).stderr;
  };

  test("examples/milter-rules.service passes systemd-analyze verify, and a typo would not", () => {
    expect(verify(unit)).toBe("");
    expect(verify(unit.replace("Type=simple", "Tpye=simple"))).toContain("Unknown key 'Tpye'");
    expect(unit).toContain("ExecStart=/usr/bin/node --import tsx examples/rules.ts");
    // systemctl reload: SIGHUP, which rules.ts answers by reading its rules again (tested above).
    expect(unit).toContain("ExecReload=/bin/kill -HUP $MAINPID");
    expect(unit).toContain("Environment=MILTER_RULES=/etc/milter/rules.json");
  });

  test("systemd-analyze security rates its sandbox OK (exposure under 2.0), and V8 keeps its W+X memory", () => {
    const file = join(dir, "milter-rules.service");
    writeFileSync(file, unit);
    const report = execFileSync("systemd-analyze", ["security", "--offline=true", file], { encoding: "utf8" });
    const [, exposure, rating] = /Overall exposure level for milter-rules\.service: ([\d.]+) (\w+)/.exec(report)!;
    expect(Number(exposure)).toBeLessThan(2.0);
    expect(rating).toBe("OK");
    expect(unit).not.toMatch(/^MemoryDenyWriteExecute=/m); // V8 compiles into memory it writes
  });

  test("its user comes from examples/milter.sysusers, which systemd-sysusers takes", () => {
    const root = join(dir, "sysroot");
    mkdirSync(join(root, "etc/sysusers.d"), { recursive: true });
    copyFileSync(join(ROOT, "examples/milter.sysusers"), join(root, "etc/sysusers.d/milter.conf"));
    execFileSync("systemd-sysusers", [`--root=${root}`], { stdio: "ignore" });
    const passwd = readFileSync(join(root, "etc/passwd"), "utf8");
    expect(passwd).toMatch(new RegExp(`^${setting("User")}:x:\\d+:\\d+:.*:/usr/sbin/nologin$`, "m"));
  });

  test("the main.cf line finds the socket from Debian's chrooted smtpd, in a directory the sandbox may write", () => {
    const queue = /= (.*)/.exec(execFileSync("postconf", ["-d", "queue_directory"], { encoding: "utf8" }))![1].trim();
    const socket = setting("Environment").replace(/^MILTER_SOCKET=unix:/, "");
    const inChroot = /^#\s+smtpd_milters = unix:(\S+)$/m.exec(unit)![1];
    expect(join(queue, inChroot)).toBe(socket); // smtpd, chrooted in the queue directory, sees it there
    expect(unit).toContain(`ReadWritePaths=${dirname(socket)}`);
    expect(unit).toContain(
      `ExecStartPre=+/usr/bin/install -d -o ${setting("User")} -g postfix -m 2750 ${dirname(socket)}`,
    );
  });
});
