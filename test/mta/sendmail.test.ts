/**
 * End to end behind a real Sendmail 8.17 (Debian's, extracted privately by
 * scripts/sendmail-tree.sh): its cf holds the README's `INPUT_MAIL_FILTER`
 * line as written, only the socket changed, and the assertions are on what
 * Sendmail answered over SMTP, what it delivered (headers, body, envelope,
 * return receipts) and what it kept in its queue. The scripted filter runs
 * under Node, once answering each callback at once and once awaiting a timer
 * in every callback first. In CI (CI=true) a Sendmail that cannot be provisioned
 * fails the file; elsewhere the file is skipped, saying why.
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Runtime } from "../helpers/runtimes.ts";
import { type FilterProcess, killAll, type SocketKind, startFilter } from "../helpers/filter.ts";
import {
  type Delivered,
  PrivateSendmail,
  provisionSendmail,
  SENDMAIL_HOST,
  stopAllSendmail,
  withSocket,
} from "./sendmail.ts";
import { readmeBlock, startQuickStart } from "./readme.ts";
import { send, SmtpClient, type Transaction } from "./smtp.ts";

const IN_CI = process.env.CI === "true";
const provisioned = provisionSendmail();
if ("missing" in provisioned && IN_CI) throw new Error(`${provisioned.missing} (CI=true: Sendmail is required)`);
const TREE = "tree" in provisioned ? provisioned.tree : "";
if ("missing" in provisioned) {
  console.warn(`test/mta/sendmail.test.ts: Sendmail end to end skipped outside CI: ${provisioned.missing}`);
  test.skip(`Sendmail end to end, skipped outside CI: ${provisioned.missing}`, () => {});
}

afterAll(async () => {
  await stopAllSendmail();
  await killAll();
});

/** The README's `INPUT_MAIL_FILTER` line, as written. */
const README_LINE = readmeBlock("Use with Sendmail", "").split("\n").find((l) => l.startsWith("INPUT_MAIL_FILTER("))!;

const ALL_FLAGS = "ADDHDRS,CHGHDRS,CHGBODY,ADDRCPT,ADDRCPT_PAR,DELRCPT,QUARANTINE,CHGFROM,SETSYMLIST";
type Instruction = Record<string, unknown>;
const RULES: Record<string, Record<string, Instruction>> = {
  envrcpt: {
    "<blocked@example.net>": { reply: ["550", "5.7.1", "no mail for blocked here"], stat: "Reject" },
    "<busy@example.net>": { stat: "Tempfail" },
    "<vip@example.net>": { stat: "Accept" },
    "<policy@example.net>": {
      mlreply: ["550", "5.7.26", ["unauthenticated mail is not accepted", "see RFC 7489"]],
      stat: "Reject",
    },
  },
};

/** How long each callback of the async variant awaits a timer before it answers. */
const ASYNC_MS = 15;

/**
 * RULES for the async variant: every callback Sendmail makes in these tests
 * awaits ASYNC_MS first. The fixture looks a rule up by callback and
 * `String(first argument)`: the host, HELO name, sender, recipient or header
 * name; `"undefined"` for the callbacks without arguments, and
 * `"[object Object]"` for body (its argument is the chunk's description).
 */
function awaitingRules(): Record<string, Record<string, Instruction>> {
  const keys: Record<string, string[]> = {
    connect: ["localhost"],
    helo: ["client.test.example"],
    envfrom: ["<alice@example.org>"],
    envrcpt: [
      ...Object.keys(RULES.envrcpt),
      ...["bob", "erin", "carol", "dave"].map((user) => `<${user}@example.net>`),
    ],
    header: ["Subject", "From", "To", "X-Change-Me", "X-Delete-Me", "X-Test-Eom"],
    data: ["undefined"],
    eoh: ["undefined"],
    body: ["[object Object]"],
    eom: ["undefined"],
    abort: ["undefined"],
    close: ["undefined"],
  };
  return Object.fromEntries(
    Object.entries(keys).map((
      [cb, names],
    ) => [cb, Object.fromEntries(names.map((name) => [name, { awaitMs: ASYNC_MS, ...RULES[cb]?.[name] }]))]),
  );
}

let counter = 0;

const header = (d: Delivered, name: string): string[] =>
  d.headers.filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
const bySubject = (subject: string) => (d: Delivered): boolean => header(d, "Subject").some((s) => s.includes(subject));
/** The queue id in Sendmail's 250 to the final dot. */
const queueId = (tx: Transaction): string =>
  /^250 2\.0\.0 (\w+) Message accepted for delivery$/.exec(tx.end!.lines[0])![1];

/**
 * What a pipelining filter negotiates: every action, and no reply to the
 * headers, end of headers and body (Sendmail offers them), which the binding
 * then pipelines.
 */
const PIPELINING = JSON.stringify({ result: ["Continue", ALL_FLAGS.split(","), ["NR_HDR", "NR_EOH", "NR_BODY"]] });

describe.runIf(TREE).each<[SocketKind, "sync" | "async" | "pipelined", Runtime]>([
  ["unix", "sync", "node"],
  ["inet", "sync", "node"],
  ["unix", "async", "node"],
  ["inet", "async", "node"],
  ["unix", "pipelined", "node"],
  ["unix", "pipelined", "deno"],
  ["unix", "pipelined", "bun"],
])("Sendmail with the filter on a %s socket, callbacks answering %s, on %s", (socket, mode, runtime) => {
  let filter: FilterProcess;
  let sendmail: PrivateSendmail;
  beforeAll(async () => {
    const rules = mode === "async" ? awaitingRules() : RULES;
    const env = { FLAGS: ALL_FLAGS, RULES: JSON.stringify(rules) };
    filter = await startFilter({
      socket,
      runtime,
      env: mode === "pipelined" ? { ...env, NEGOTIATE: PIPELINING } : env,
    });
    sendmail = await PrivateSendmail.start(TREE, withSocket(README_LINE, filter.spec));
  });

  /** A message with a unique subject; `eom` becomes its X-Test-Eom instruction (awaiting first, in the async variant). */
  function message(eom?: Instruction, headers: string[] = []): { subject: string; content: string } {
    const subject = `test message ${++counter}`;
    const lines = [`Subject: ${subject}`, "From: alice@example.org", "To: bob@example.net", ...headers];
    if (eom !== undefined) {
      lines.push(`X-Test-Eom: ${JSON.stringify(mode === "async" ? { awaitMs: ASYNC_MS, ...eom } : eom)}`);
    }
    return { subject, content: `${lines.join("\r\n")}\r\n\r\nHello Bob,\r\nthis is the body.\r\n` };
  }

  /** Sends one {@linkcode message} from Alice (to Bob, or `opts.to`): its subject and the SMTP transaction. */
  async function transaction(
    eom?: Instruction,
    opts: { headers?: string[]; to?: string[] } = {},
  ): Promise<{ subject: string; tx: Transaction }> {
    const { subject, content } = message(eom, opts.headers);
    const tx = await send(sendmail.smtpPort, {
      from: "alice@example.org",
      to: opts.to ?? ["bob@example.net"],
      content,
    });
    return { subject, tx };
  }

  async function deliver(eom?: Instruction, opts: { headers?: string[]; to?: string[] } = {}): Promise<Delivered> {
    const { subject, tx } = await transaction(eom, opts);
    expect(tx.end?.code, sendmail.stderr).toBe(250);
    return await sendmail.waitForDelivery(bySubject(subject));
  }

  /** Nothing of the message went anywhere: delivery is interactive, so it would be there before the reply. */
  function nowhere(subject: string): void {
    expect(sendmail.delivered().filter((d) => d.body.includes(subject) || bySubject(subject)(d))).toEqual([]);
    expect(sendmail.queue()).toEqual([]);
  }

  test("addheader, chgheader (change and delete), insheader at index 0", async () => {
    const d = await deliver({
      actions: [
        ["addheader", "X-Added", "yes"],
        ["chgheader", "X-Change-Me", 1, "changed"],
        ["chgheader", "X-Delete-Me", 1, null],
        ["insheader", 0, "X-Top", "first"],
      ],
    }, { headers: ["X-Change-Me: original", "X-Delete-Me: doomed"] });
    expect(header(d, "X-Added")).toEqual(["yes"]);
    expect(header(d, "X-Change-Me")).toEqual(["changed"]);
    expect(header(d, "X-Delete-Me")).toEqual([]);
    // Index 0 is above everything, even the Received header Sendmail added.
    expect(d.headers.map(([n]) => n).slice(0, 2)).toEqual(["X-Top", "Received"]);
    expect(header(d, "X-Top")).toEqual(["first"]);
  });

  test("replacebody with text and with bytes, larger than 64 KiB", async () => {
    const text = await deliver({ actions: [["replacebody", { repeat: "a replaced line of text\r\n", times: 4000 }]] });
    expect(text.body).toBe("a replaced line of text\n".repeat(4000));
    const bytes = await deliver({
      actions: [["replacebody", { repeat: "bytes, line after line\r\n", times: 4000, asBytes: true }]],
    });
    expect(bytes.body).toBe("bytes, line after line\n".repeat(4000));
    expect(bytes.body.length).toBeGreaterThan(64 * 1024);
  });

  test("chgfrom, addrcpt, addrcpt_par and delrcpt change the delivered envelope", async () => {
    const d = await deliver({
      actions: [
        ["chgfrom", "<bounces@example.org>"],
        ["addrcpt", "<carol@example.net>"],
        ["addrcpt_par", "<dave@example.net>", "NOTIFY=SUCCESS"],
        ["delrcpt", "<bob@example.net>"],
      ],
    }, { to: ["bob@example.net", "erin@example.net"] });
    expect(d.mailFrom).toBe("bounces@example.org");
    expect(d.rcptTo.toSorted()).toEqual(["carol@example.net", "dave@example.net", "erin@example.net"]);
    // addrcpt_par's ESMTP arguments reach Sendmail: dave alone asked for a return receipt, which goes to the new sender.
    const subject = header(d, "Subject")[0];
    const receipts = () => sendmail.delivered().filter((r) => r.body.includes(`Subject: ${subject}\n`));
    await expect.poll(() => receipts().length).toBe(1);
    const [receipt] = receipts();
    expect(header(receipt, "Subject")).toEqual(["Return receipt"]);
    expect(receipt.rcptTo).toEqual(["bounces@example.org"]);
    expect(receipt.body.match(/^Final-Recipient: .*$/gm)).toEqual(["Final-Recipient: rfc822; dave@example.net"]);
    expect(receipt.body).toMatch(/^Action: delivered/m);
  });

  test("quarantine keeps the message in Sendmail's queue with the reason; sendmail -qQ -qI<id> -Q releases it", async () => {
    const { subject, tx } = await transaction({ actions: [["quarantine", "suspicious attachment"]] });
    expect(tx.end?.code).toBe(250);
    const id = queueId(tx);
    try {
      expect(sendmail.queue()).toEqual([{
        id,
        quarantined: true,
        reason: "suspicious attachment",
        sender: "<alice@example.org>",
        recipients: ["bob@example.net"],
      }]);
      expect(await sendmail.command(["-bp", "-qQ"])).toMatch(
        new RegExp(`^${id} .*<alice@example.org>\\n\\s+QUARANTINE: suspicious attachment\\n`, "m"),
      );
      expect(sendmail.delivered().some(bySubject(subject))).toBe(false);
      await sendmail.command(["-qQ", `-qI${id}`, "-Q"]);
      expect(sendmail.queue()).toMatchObject([{ id, quarantined: false, reason: null }]);
    } finally {
      for (const file of ["hf", "qf", "df"]) rmSync(join(sendmail.dir, "queue", `${file}${id}`), { force: true });
    }
  });

  test("Reject with setreply at RCPT gives that 5xx; the others still get the mail", async () => {
    const { subject, tx } = await transaction(undefined, { to: ["blocked@example.net", "bob@example.net"] });
    // Sendmail puts the recipient before the filter's text.
    expect(tx.rcpt[0]).toEqual({ code: 550, lines: ["550 5.7.1 <blocked@example.net>... no mail for blocked here"] });
    expect(tx.rcpt[1].code).toBe(250);
    expect((await sendmail.waitForDelivery(bySubject(subject))).rcptTo).toEqual(["bob@example.net"]);
  });

  test("setmlreply with Reject at RCPT gives that multi-line 5xx", async () => {
    const { tx } = await transaction(undefined, { to: ["policy@example.net"] });
    expect(tx.rcpt[0]).toEqual({
      code: 550,
      lines: ["550-5.7.26 <policy@example.net>... unauthenticated mail is not accepted", "550 5.7.26 see RFC 7489"],
    });
  });

  test("Tempfail at RCPT gives 4xx", async () => {
    const { tx } = await transaction(undefined, { to: ["busy@example.net"] });
    expect(tx.rcpt[0]).toEqual({ code: 451, lines: ["451 4.3.2 Please try again later"] });
  });

  test("setreply with Reject at end of message gives exactly that 5xx, and nothing is delivered", async () => {
    const { subject, tx } = await transaction({ reply: ["554", "5.7.1", "message content rejected"], stat: "Reject" });
    expect(tx.end).toEqual({ code: 554, lines: ["554 5.7.1 message content rejected"] });
    nowhere(subject);
  });

  test("setmlreply with Reject at end of message gives that multi-line 5xx, and nothing is delivered", async () => {
    const { subject, tx } = await transaction({
      mlreply: ["554", "5.7.0", ["rejected by policy", "see https://example.org/why"]],
      stat: "Reject",
    });
    expect(tx.end).toEqual({
      code: 554,
      lines: ["554-5.7.0 rejected by policy", "554 5.7.0 see https://example.org/why"],
    });
    nowhere(subject);
  });

  test("Tempfail at end of message gives 4xx, and nothing is delivered or queued", async () => {
    const { subject, tx } = await transaction({ stat: "Tempfail" });
    expect(tx.end).toEqual({ code: 451, lines: ["451 4.3.2 Please try again later"] });
    nowhere(subject);
  });

  test("Discard is accepted over SMTP and never delivered", async () => {
    const { subject, tx } = await transaction({ stat: "Discard" });
    expect(tx.end?.code).toBe(250);
    queueId(tx);
    nowhere(subject);
  });

  test("a callback that throws: 451 4.3.0, and nothing is delivered", async () => {
    const { subject, tx } = await transaction({ throw: "the filter broke" });
    expect(tx.end).toEqual({ code: 451, lines: ["451 4.3.0 mail filter scripted failed; try again later"] });
    nowhere(subject);
    await filter.waitFor((e) => e.event === "reported" && e.cb === "eom" && e.message === "the filter broke");
  });

  test("Accept at RCPT delivers the message untouched and skips the later stages", async () => {
    const before = filter.callbacks("eom").length;
    const d = await deliver({ actions: [["addheader", "X-Added", "must not appear"]] }, { to: ["vip@example.net"] });
    expect(header(d, "X-Added")).toEqual([]);
    expect(d.body).toBe("Hello Bob,\nthis is the body.\n");
    expect(filter.callbacks("eom").length).toBe(before);
  });

  test("the macros Sendmail sends reach getsymval, and i is the queue id Sendmail answers", async () => {
    const { subject, tx } = await transaction();
    const id = queueId(tx);
    const d = await sendmail.waitForDelivery(bySubject(subject));
    expect(header(d, "Received")[0]).toMatch(new RegExp(`with ESMTP id ${id}\\b`));
    const eom = await filter.waitFor((e) =>
      e.cb === "eom" && filter.callbacks("header").some((h) => h.ctx === e.ctx && h.args[1] === subject)
    );
    const events = filter.eventsOf(eom.ctx);
    const at = (cb: string): Record<string, string> => events.find((e) => e.cb === cb)!.macros;
    // Sendmail -bs: the client is this process, not a peer address.
    expect(at("connect")).toEqual({ j: SENDMAIL_HOST, _: "localhost [[UNIX: localhost]]" });
    expect(at("envfrom")).toMatchObject({ i: id, "{mail_addr}": "alice@example.org" });
    expect(at("envrcpt")).toMatchObject({ "{rcpt_addr}": "bob@example.net" });
    expect(at("eom").i).toBe(id);
    // A header callback sees the queue id of MAIL FROM, pipelined or not.
    expect(at("header").i).toBe(id);
    const stats = events.find((e) => e.cb === "eom")!.pipeline;
    if (mode === "pipelined") expect(stats.peakBytes).toBeGreaterThan(0); // the headers went through the shim's queue
    else expect(stats === null || stats.peakBytes === 0).toBe(true);
  });

  // Only the async variant has this test (defined, not skipped, in the others).
  if (mode === "async") {
    test("each callback answered only after its await", async () => {
      const [client] = await SmtpClient.open(sendmail.smtpPort);
      try {
        await client.command("EHLO client.test.example");
        await client.command("MAIL FROM:<alice@example.org>");
        let started = performance.now();
        expect((await client.command("RCPT TO:<bob@example.net>")).code).toBe(250);
        expect(performance.now() - started).toBeGreaterThanOrEqual(ASYNC_MS);
        const { subject, content } = message();
        started = performance.now();
        const [, end] = await client.data(content);
        const elapsed = performance.now() - started;
        expect(end?.code).toBe(250);
        // DATA, each header, end of headers, the body and end of message: one await each, one after the other.
        const eom = await filter.waitFor((e) =>
          e.cb === "eom" && filter.callbacks("header").some((h) => h.ctx === e.ctx && h.args[1] === subject)
        );
        const stages = filter.eventsOf(eom.ctx).filter((e) => ["data", "header", "eoh", "body", "eom"].includes(e.cb));
        expect(stages.map((e) => e.cb)).toEqual(["data", "header", "header", "header", "eoh", "body", "eom"]);
        expect(elapsed).toBeGreaterThanOrEqual(stages.length * ASYNC_MS);
      } finally {
        await client.quit();
      }
    });
  }
});

describe.runIf(TREE)("Sendmail and the README", () => {
  test("setsymlist in negotiate makes Sendmail send macros it otherwise would not", async () => {
    const filter = await startFilter({
      env: {
        NEGOTIATE: JSON.stringify({
          result: ["Continue", ["SETSYMLIST"], []],
          symlist: { CONNECT: "j {client_addr} {client_name}" },
        }),
      },
    });
    const sendmail = await PrivateSendmail.start(TREE, withSocket(README_LINE, filter.spec));
    const tx = await send(sendmail.smtpPort, {
      from: "alice@example.org",
      to: ["bob@example.net"],
      content: "Subject: symlist\r\n\r\nHello.\r\n",
    });
    expect(tx.end?.code).toBe(250);
    const connect = await filter.waitFor((e) => e.cb === "connect");
    // The list replaces Sendmail's default (j, _, {daemon_name}, {if_name}, {if_addr}).
    expect(connect.macros).toEqual({
      j: SENDMAIL_HOST,
      "{client_addr}": "[UNIX: localhost]",
      "{client_name}": "localhost",
    });
    await sendmail.stop();
    await filter.kill();
  });

  test("the README's line has F=T: a filter that is down gets 4xx, and nothing is delivered", async () => {
    expect(README_LINE).toMatch(/, F=T,/);
    const sendmail = await PrivateSendmail.start(TREE, withSocket(README_LINE, "unix:/nonexistent/milter.sock"));
    const tx = await send(sendmail.smtpPort, {
      from: "alice@example.org",
      to: ["bob@example.net"],
      content: "Subject: down\r\n\r\nHello.\r\n",
    });
    expect(tx.mail).toEqual({ code: 451, lines: ["451 4.3.2 Please try again later"] });
    expect(tx.end).toBeNull();
    expect(sendmail.delivered()).toEqual([]);
    expect(sendmail.queue()).toEqual([]);
    await sendmail.stop();
  });

  test("without F=T, as the README says, mail passes unfiltered while the filter is down", async () => {
    const line = withSocket(README_LINE, "unix:/nonexistent/milter.sock").replace(" F=T,", "");
    expect(line).not.toMatch(/F=/);
    const sendmail = await PrivateSendmail.start(TREE, line);
    const tx = await send(sendmail.smtpPort, {
      from: "alice@example.org",
      to: ["bob@example.net"],
      content: "Subject: unfiltered\r\n\r\nHello.\r\n",
    });
    expect(tx.end?.code).toBe(250);
    expect(sendmail.delivered().map((d) => header(d, "Subject"))).toEqual([["unfiltered"]]);
    await sendmail.stop();
  });

  test("a filter that crashes mid-message: Sendmail answers 4xx", async () => {
    const filter = await startFilter({ socket: "inet", env: { FLAGS: "ADDHDRS" } });
    const sendmail = await PrivateSendmail.start(TREE, withSocket(README_LINE, filter.spec));
    const [client] = await SmtpClient.open(sendmail.smtpPort);
    await client.command("EHLO client.test.example");
    expect((await client.command("MAIL FROM:<alice@example.org>")).code).toBe(250);
    filter.child.kill("SIGKILL");
    await filter.exited;
    const rcpt = await client.command("RCPT TO:<bob@example.net>");
    expect(rcpt).toEqual({ code: 451, lines: ["451 4.3.2 Please try again later"] });
    await client.quit();
    expect(sendmail.delivered()).toEqual([]);
    await sendmail.stop();
  });

  test("the quick-start filter, run as the README says, behind the README's line: stamped with the queue id", async () => {
    const dir = mkdtempSync(join(tmpdir(), "milter-readme-sendmail-"));
    const filter = await startQuickStart(dir);
    const port = filter.port;
    try {
      const sendmail = await PrivateSendmail.start(TREE, README_LINE.replace("inet:8890@", `inet:${port}@`));
      const tx = await send(sendmail.smtpPort, {
        from: "alice@example.org",
        to: ["bob@example.net", "spam@example.net"],
        content: "Subject: readme\r\nFrom: alice@example.org\r\nTo: bob@example.net\r\n\r\nHello.\r\n",
      });
      expect(tx.rcpt.map((r) => r.lines.join("\n"))).toEqual([
        "250 2.1.5 <bob@example.net>... Recipient ok",
        "550 5.7.1 <spam@example.net>... no such user here",
      ]);
      const id = queueId(tx);
      const d = await sendmail.waitForDelivery(bySubject("readme"));
      expect(d.rcptTo).toEqual(["bob@example.net"]);
      expect(header(d, "X-Stamped")).toEqual([`yes, queue id ${id}`]); // Sendmail sends i with the envelope sender
      await sendmail.stop();
    } finally {
      filter.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
