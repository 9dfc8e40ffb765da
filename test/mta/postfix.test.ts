/**
 * End to end behind a real Postfix: a private instance relays every message
 * to smtp-sink, and the assertions are on what Postfix answered over SMTP and
 * what it delivered (headers, body and envelope) or held.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type FilterProcess, killAll, type SocketKind, startFilter } from "../helpers/filter.ts";
import type { Runtime } from "../helpers/runtimes.ts";
import { type Delivered, postfixMilterSpec, PrivatePostfix, stopAllPostfix } from "./postfix.ts";
import { send, type Transaction } from "./smtp.ts";

afterAll(async () => {
  await stopAllPostfix();
  await killAll();
});

const ALL_FLAGS = "ADDHDRS,CHGHDRS,CHGBODY,ADDRCPT,ADDRCPT_PAR,DELRCPT,QUARANTINE,CHGFROM,SETSYMLIST";
const RULES = {
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

let counter = 0;
/** A message with a unique subject; `eom` becomes its X-Test-Eom instruction. */
function message(eom?: unknown, headers: string[] = []): { subject: string; content: string } {
  const subject = `test message ${++counter}`;
  const lines = [`Subject: ${subject}`, "From: alice@example.org", "To: bob@example.net", ...headers];
  if (eom !== undefined) lines.push(`X-Test-Eom: ${JSON.stringify(eom)}`);
  return { subject, content: `${lines.join("\r\n")}\r\n\r\nHello Bob,\r\nthis is the body.\r\n` };
}

const header = (d: Delivered, name: string): string[] =>
  d.headers.filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
const bySubject = (subject: string) => (d: Delivered): boolean => header(d, "Subject").some((s) => s.includes(subject));

/**
 * What a pipelining filter negotiates: every action, and no reply to the
 * headers, end of headers and body (Postfix offers them all), which the
 * binding then pipelines.
 */
const PIPELINING = JSON.stringify({ result: ["Continue", ALL_FLAGS.split(","), ["NR_HDR", "NR_EOH", "NR_BODY"]] });

describe.each<{ socket: SocketKind; async: boolean; pipelined?: Runtime }>([
  { socket: "unix", async: false },
  { socket: "inet", async: false },
  { socket: "unix", async: true },
  { socket: "unix", async: false, pipelined: "node" },
  { socket: "unix", async: false, pipelined: "deno" },
  { socket: "unix", async: false, pipelined: "bun" },
])("Postfix with the filter on a $socket socket (async callbacks: $async, pipelined on: $pipelined)", ({
  socket,
  async,
  pipelined,
}) => {
  let filter: FilterProcess;
  let postfix: PrivatePostfix;
  beforeAll(async () => {
    filter = await startFilter({
      socket,
      runtime: pipelined ?? "node",
      env: {
        FLAGS: ALL_FLAGS,
        RULES: JSON.stringify(RULES),
        SOCKET_MODE: "666",
        ...(async ? { ASYNC_ALL: "1" } : {}),
        ...(pipelined ? { NEGOTIATE: PIPELINING } : {}),
      },
    });
    postfix = await PrivatePostfix.start(postfixMilterSpec(filter.spec));
  });

  /**
   * Waits for Postfix's cleanup to log that the filter's end-of-message `action` dropped a message
   * (`<queue id>: milter-reject: END-OF-MESSAGE from …: <detail>`), then checks that the message went
   * no further: the queue manager never logged it, no queue holds it, and smtp-sink did not get it.
   * `id` is its queue id when the SMTP reply gave one (a rejected message's is only in the log).
   */
  async function droppedAtEom(
    action: "reject" | "discard",
    detail: string,
    subject: string,
    id = "\\w+",
  ): Promise<void> {
    const line = new RegExp(`(${id}): milter-${action}: END-OF-MESSAGE from [^:]+: ${detail}`);
    await expect.poll(() => postfix.maillog(), { timeout: 10_000 }).toMatch(line);
    const queueId = line.exec(postfix.maillog())![1];
    expect(postfix.maillog()).not.toMatch(new RegExp(`${queueId}: (from=|to=|removed)`));
    expect((await postfix.queue()).map((q) => q.queue_id)).not.toContain(queueId);
    expect(postfix.delivered().some(bySubject(subject))).toBe(false);
  }

  /** Sends one {@linkcode message} from Alice (to Bob, or `opts.to`): its subject and the SMTP transaction. */
  async function transaction(
    eom?: unknown,
    opts: { headers?: string[]; to?: string[] } = {},
  ): Promise<{ subject: string; tx: Transaction }> {
    const { subject, content } = message(eom, opts.headers);
    const tx = await send(postfix.smtpPort, { from: "alice@example.org", to: opts.to ?? ["bob@example.net"], content });
    return { subject, tx };
  }

  async function deliver(eom?: unknown, opts: { headers?: string[]; to?: string[] } = {}): Promise<Delivered> {
    const { subject, tx } = await transaction(eom, opts);
    expect(tx.end?.code).toBe(250);
    return await postfix.waitForDelivery(bySubject(subject));
  }

  test("addheader, chgheader (change and delete), insheader at index 0", async () => {
    const d = await deliver({
      actions: [["addheader", "X-Added", "yes"], ["chgheader", "X-Change-Me", 1, "changed"], [
        "chgheader",
        "X-Delete-Me",
        1,
        null,
      ], ["insheader", 0, "X-Top", "first"]],
    }, { headers: ["X-Change-Me: original", "X-Delete-Me: doomed"] });
    expect(header(d, "X-Added")).toEqual(["yes"]);
    expect(header(d, "X-Change-Me")).toEqual(["changed"]);
    expect(header(d, "X-Delete-Me")).toEqual([]);
    // Index 0 is above everything, even the Received header Postfix added; smtp-sink then prepends its own.
    expect(d.headers.map(([n]) => n).slice(0, 3)).toEqual(["Received", "X-Top", "Received"]);
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
        ["addrcpt_par", "<dave@example.net>", "NOTIFY=NEVER"],
        ["delrcpt", "<bob@example.net>"],
      ],
    }, { to: ["bob@example.net", "erin@example.net"] });
    expect(d.mailFrom).toBe("bounces@example.org");
    expect(d.rcptTo.toSorted()).toEqual(["carol@example.net", "dave@example.net", "erin@example.net"]);
    // addrcpt_par's ESMTP arguments travel on to the next hop.
    expect(d.rcptArgs.find((a) => a.includes("dave@"))).toMatch(/NOTIFY=NEVER/);
    expect(d.rcptArgs.find((a) => a.includes("carol@"))).not.toMatch(/NOTIFY=NEVER/);
  });

  test("quarantine puts the message on hold", async () => {
    const { subject, tx } = await transaction({ actions: [["quarantine", "suspicious attachment"]] });
    expect(tx.end?.code).toBe(250);
    const id = /queued as (\w+)/.exec(tx.end!.lines[0])![1];
    await expect.poll(async () => (await postfix.queue()).find((q) => q.queue_id === id)?.queue_name, {
      timeout: 10_000,
    }).toBe("hold");
    // Postfix keeps no trace of the filter's reason: it logs a fixed text, and the queue file has none.
    expect(postfix.maillog()).toMatch(
      new RegExp(`${id}: milter-hold: END-OF-MESSAGE from [^:]+: milter triggers HOLD action`),
    );
    expect(postfix.delivered().some(bySubject(subject))).toBe(false);
  });

  test("Reject with setreply at RCPT gives exactly that 5xx; the others still get the mail", async () => {
    const { subject, tx } = await transaction(undefined, { to: ["blocked@example.net", "bob@example.net"] });
    expect(tx.rcpt[0]).toEqual({ code: 550, lines: ["550 5.7.1 no mail for blocked here"] });
    expect(tx.rcpt[1].code).toBe(250);
    expect((await postfix.waitForDelivery(bySubject(subject))).rcptTo).toEqual(["bob@example.net"]);
  });

  test("setmlreply with Reject at RCPT gives that multi-line 5xx", async () => {
    const { tx } = await transaction(undefined, { to: ["policy@example.net"] });
    expect(tx.rcpt[0]).toEqual({
      code: 550,
      lines: ["550-5.7.26 unauthenticated mail is not accepted", "550 5.7.26 see RFC 7489"],
    });
  });

  test("setreply with Reject at end of message gives exactly that 5xx", async () => {
    const { tx } = await transaction({ reply: ["554", "5.7.1", "message content rejected"], stat: "Reject" });
    expect(tx.end).toEqual({ code: 554, lines: ["554 5.7.1 message content rejected"] });
  });

  test("Tempfail at RCPT gives 4xx", async () => {
    const { tx } = await transaction(undefined, { to: ["busy@example.net"] });
    expect(tx.rcpt[0].code).toBe(451);
    expect(tx.rcpt[0].lines[0]).toMatch(/^451 4\.7\.1 /);
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
    await droppedAtEom("reject", "5\\.7\\.0 rejected by policy", subject);
  });

  test("Tempfail at end of message gives 4xx", async () => {
    const { tx } = await transaction({ stat: "Tempfail" });
    expect(tx.end?.code).toBe(451);
  });

  test("Discard is accepted over SMTP and never delivered", async () => {
    const { subject, tx } = await transaction({ stat: "Discard" });
    expect(tx.end?.code).toBe(250);
    const id = /queued as (\w+)/.exec(tx.end!.lines[0])![1];
    await droppedAtEom("discard", "milter triggers DISCARD action", subject, id);
  });

  test("Accept at RCPT delivers the message untouched and skips the later stages", async () => {
    const before = filter.callbacks("eom").length;
    const d = await deliver({ actions: [["addheader", "X-Added", "must not appear"]] }, { to: ["vip@example.net"] });
    expect(header(d, "X-Added")).toEqual([]);
    expect(d.body).toBe("Hello Bob,\nthis is the body.\n");
    expect(filter.callbacks("eom").length).toBe(before);
  });

  test("the macros Postfix sends reach getsymval at each stage", async () => {
    const { subject } = await deliver().then((d) => ({ subject: header(d, "Subject")[0] }));
    const eom = await filter.waitFor((e) =>
      e.cb === "eom" && filter.callbacks("header").some((h) => h.ctx === e.ctx && h.args[1] === subject)
    );
    const events = filter.eventsOf(eom.ctx);
    const at = (cb: string): Record<string, string> => events.find((e) => e.cb === cb)!.macros;
    expect(at("connect")).toMatchObject({
      j: "mx.postfix-test.example",
      _: "localhost [127.0.0.1]",
      "{daemon_name}": "mx.postfix-test.example",
    });
    expect(at("connect")["{client_addr}"]).toBeUndefined(); // not in Postfix's default milter_connect_macros
    expect(at("envfrom")).toMatchObject({ "{mail_addr}": "alice@example.org" });
    expect(at("envrcpt")).toMatchObject({ "{rcpt_addr}": "bob@example.net" });
    expect(at("eom").i).toMatch(/^[0-9A-F]{6,}$/);
    // A header callback sees the queue id Postfix sent with DATA, pipelined or not.
    expect(at("header").i).toBe(at("eom").i);
    const stats = events.find((e) => e.cb === "eom")!.pipeline;
    if (pipelined) expect(stats.peakBytes).toBeGreaterThan(0); // the headers went through the shim's queue
    else expect(stats === null || stats.peakBytes === 0).toBe(true);
  });
});

test("setsymlist in negotiate makes Postfix send a macro it otherwise would not", async () => {
  const filter = await startFilter({
    env: {
      SOCKET_MODE: "666",
      NEGOTIATE: JSON.stringify({
        result: ["Continue", ["SETSYMLIST"], []],
        symlist: { CONNECT: "j {client_addr} {client_name}" },
      }),
    },
  });
  const postfix = await PrivatePostfix.start(postfixMilterSpec(filter.spec));
  const tx = await send(postfix.smtpPort, {
    from: "alice@example.org",
    to: ["bob@example.net"],
    content: message().content,
  });
  expect(tx.end?.code).toBe(250);
  const connect = await filter.waitFor((e) => e.cb === "connect");
  expect(connect.macros).toMatchObject({
    j: "mx.postfix-test.example",
    "{client_addr}": "127.0.0.1",
    "{client_name}": "localhost",
  });
  await postfix.stop();
});

describe("when the filter is not there, nothing is accepted unfiltered", () => {
  test("a filter that is down: Postfix answers 4xx", async () => {
    const postfix = await PrivatePostfix.start("unix:/nonexistent/milter.sock");
    const tx = await send(postfix.smtpPort, {
      from: "alice@example.org",
      to: ["bob@example.net"],
      content: message().content,
    });
    expect(tx.mail.code).toBe(451);
    expect(postfix.delivered()).toEqual([]);
    await postfix.stop();
  });

  test("a filter that crashes mid-message: Postfix answers 4xx", async () => {
    const filter = await startFilter({ socket: "inet", env: { FLAGS: "ADDHDRS" } });
    const postfix = await PrivatePostfix.start(postfixMilterSpec(filter.spec));
    const { SmtpClient } = await import("./smtp.ts");
    const [client] = await SmtpClient.open(postfix.smtpPort);
    await client.command("EHLO client.test.example");
    expect((await client.command("MAIL FROM:<alice@example.org>")).code).toBe(250);
    filter.child.kill("SIGKILL");
    await filter.exited;
    const rcpt = await client.command("RCPT TO:<bob@example.net>");
    expect(rcpt.code).toBe(451);
    await client.quit();
    expect(postfix.delivered()).toEqual([]);
    await postfix.stop();
  });
});
