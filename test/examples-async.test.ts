/**
 * The examples whose callbacks await I/O, run as their header comments say
 * and driven as an MTA would drive them: examples/dnsbl.ts against a small
 * DNS responder written here (UDP on 127.0.0.1), and examples/classify.ts
 * against an HTTP classifier on 127.0.0.1. Nothing of libmilter is mocked.
 */

import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { mkdtempSync } from "node:fs";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { MilterClient, Reply } from "../src/testing/mod.ts";
import { FilterProcess, freePort, killAll, startFilter, waitListening } from "./helpers/filter.ts";
import { command, ROOT, type Runtime } from "./helpers/runtimes.ts";

const extra = new Set<FilterProcess>();
afterAll(async () => {
  await killAll();
  await Promise.all([...extra].map((f) => f.kill()));
});

function example(name: string, env: Record<string, string>, runtime?: Runtime): Promise<FilterProcess> {
  if (runtime === "deno" && name === "dnsbl") return dnsblUnderDeno(env);
  return startFilter({ fixture: `../../examples/${name}.ts`, readyWhen: "listening", env, runtime });
}

/**
 * examples/dnsbl.ts under Deno, run as its header comment says: Deno's
 * `Resolver.setServers` needs `--allow-sys=networkInterfaces`, which the
 * helpers' command line does not grant.
 */
async function dnsblUnderDeno(env: Record<string, string>): Promise<FilterProcess> {
  const [cmd, [run, ...args]] = command("deno", join(ROOT, "examples/dnsbl.ts"));
  const spec = `inet:${await freePort()}@127.0.0.1`;
  const child = spawn(cmd, [run, "--allow-sys=networkInterfaces", ...args], {
    cwd: ROOT,
    env: { ...process.env, MILTER_SOCKET: spec, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const filter = new FilterProcess(child, spec, mkdtempSync(join(tmpdir(), "milter-test-")));
  extra.add(filter);
  await waitListening(spec, () => child.exitCode !== null || child.signalCode !== null ? filter.stderr : null);
  return filter;
}

/** A client connected from `address` (an IPv4 client on port 4711 when a string). */
async function connectFrom(
  filter: FilterProcess,
  address: string | Parameters<MilterClient["connect"]>[1],
): Promise<{ client: MilterClient; reply: Reply }> {
  const client = await filter.client();
  const addr = typeof address === "string" ? { family: "inet" as const, address, port: 4711 } : address;
  return { client, reply: await client.connect("client.example", addr) };
}

/** How long `work` takes, in milliseconds, with its result. */
async function timed<T>(work: Promise<T>): Promise<[T, number]> {
  const started = Date.now();
  const result = await work;
  return [result, Date.now() - started];
}

/** What the DNS responder does for a name: A records, SERVFAIL, or no answer at all. */
type DnsEntry = string[] | "servfail" | "silent";

interface DnsResponder {
  /** `127.0.0.1:<port>`, for DNSBL_SERVER. */
  server: string;
  /** Every name asked, in order. */
  queries: string[];
  close(): Promise<void>;
}

/**
 * A DNS server over UDP on 127.0.0.1: A queries for a name in `table` get
 * its records, other types NOERROR without records, names not in the table
 * NXDOMAIN; a "servfail" name gets SERVFAIL, a "silent" one no answer.
 */
async function dnsResponder(table: Record<string, DnsEntry>): Promise<DnsResponder> {
  const socket = createSocket("udp4");
  const queries: string[] = [];
  socket.on("message", (query, peer) => {
    // The question after the 12-byte header: length-prefixed labels, a 0, QTYPE and QCLASS.
    const labels: string[] = [];
    let at = 12;
    for (; query[at] !== 0; at += query[at] + 1) {
      labels.push(String.fromCharCode(...query.subarray(at + 1, at + 1 + query[at])));
    }
    const name = labels.join(".").toLowerCase();
    const type = (query[at + 1] << 8) | query[at + 2];
    queries.push(name);
    const entry = table[name];
    if (entry === "silent") return;
    const rcode = entry === undefined ? 3 : entry === "servfail" ? 2 : 0; // NXDOMAIN, SERVFAIL, NOERROR
    const records = type === 1 && Array.isArray(entry) ? entry : [];
    // The header: the query's ID; QR, RD as asked, RA, RCODE; 1 question, the answers, no other records.
    const header = [query[0], query[1], 0x80 | (query[2] & 0x01), 0x80 | rcode, 0, 1, 0, records.length, 0, 0, 0, 0];
    // Each answer: the name as a pointer to the question's, type A, class IN, TTL 60, 4 bytes of address.
    const answers = records.flatMap((ip) => [0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...ip.split(".").map(Number)]);
    socket.send(new Uint8Array([...header, ...query.subarray(12, at + 5), ...answers]), peer.port, peer.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return {
    server: `127.0.0.1:${socket.address().port}`,
    queries,
    close: () => new Promise((resolve) => socket.close(() => resolve())),
  };
}

describe("dnsbl", () => {
  const ZONE = "bl.test";
  const LOOKUP_TIMEOUT = 600;
  let dns: DnsResponder;
  let filter: FilterProcess;
  const start = (runtime?: Runtime): Promise<FilterProcess> =>
    example("dnsbl", { DNSBL_SERVER: dns.server, DNSBL_ZONE: ZONE, DNSBL_TIMEOUT: String(LOOKUP_TIMEOUT) }, runtime);

  beforeAll(async () => {
    dns = await dnsResponder({
      [`7.2.0.192.${ZONE}`]: ["127.0.0.2", "127.0.0.4"],
      [`9.2.0.192.${ZONE}`]: "silent",
      [`10.2.0.192.${ZONE}`]: "servfail",
      [`11.2.0.192.${ZONE}`]: ["127.255.255.254"], // Spamhaus: "you asked through a public resolver"
    });
    filter = await start();
  });
  afterAll(() => dns.close());

  const LISTED = { action: "replycode", smtpCode: 554, text: `554 5.7.1 192.0.2.7 is listed in ${ZONE}` };
  const tempfail = (ip: string): Reply => ({
    action: "replycode",
    smtpCode: 451,
    text: `451 4.4.3 cannot check ${ip} against ${ZONE} now; try again later`,
  });

  test("a listed client is refused at connect with 554 naming the zone", async () => {
    const { client, reply } = await connectFrom(filter, "192.0.2.7");
    expect(reply).toEqual(LISTED);
    expect(dns.queries).toContain(`7.2.0.192.${ZONE}`);
    client.quit();
  });

  test("a client not listed (NXDOMAIN) goes on", async () => {
    const { client, reply } = await connectFrom(filter, "192.0.2.8");
    expect(reply).toEqual({ action: "continue" });
    expect(dns.queries).toContain(`8.2.0.192.${ZONE}`);
    client.quit();
  });

  test("a silent resolver tempfails with 451 at DNSBL_TIMEOUT, long before callbackTimeout", async () => {
    const client = await filter.client();
    const [reply, elapsed] = await timed(
      client.connect("client.example", { family: "inet", address: "192.0.2.9", port: 1 }),
    );
    expect(reply).toEqual(tempfail("192.0.2.9"));
    expect(elapsed).toBeGreaterThanOrEqual(LOOKUP_TIMEOUT - 50);
    expect(elapsed).toBeLessThan(LOOKUP_TIMEOUT + 2_500); // callbackTimeout is 8 s
    client.quit();
  });

  test("SERVFAIL and a 127.255.255.x refusal tempfail too", async () => {
    for (const ip of ["192.0.2.10", "192.0.2.11"]) {
      const { client, reply } = await connectFrom(filter, ip);
      expect(reply).toEqual(tempfail(ip));
      client.quit();
    }
  });

  test("an IPv6 client, or one without an address, goes on without a query", async () => {
    const asked = dns.queries.length;
    for (const addr of [{ family: "inet6" as const, address: "2001:db8::7", port: 4711 }, null]) {
      const { client, reply } = await connectFrom(filter, addr);
      expect(reply).toEqual({ action: "continue" });
      client.quit();
    }
    expect(dns.queries.length).toBe(asked);
  });

  test("while one connection waits for DNS, another is answered", async () => {
    const slow = await filter.client();
    const waiting = slow.connect("client.example", { family: "inet", address: "192.0.2.9", port: 1 });
    let settled = false;
    void waiting.then(() => settled = true);
    const { client, reply } = await connectFrom(filter, "192.0.2.7");
    expect(reply).toEqual(LISTED);
    expect(settled).toBe(false);
    expect(await waiting).toEqual(tempfail("192.0.2.9"));
    client.quit();
    slow.quit();
  });

  test.each(["deno", "bun"] as const)("runs the same under %s", async (runtime) => {
    const other = await start(runtime);
    const listed = await connectFrom(other, "192.0.2.7");
    expect(listed.reply).toEqual(LISTED);
    const clean = await connectFrom(other, "192.0.2.8");
    expect(clean.reply).toEqual({ action: "continue" });
    listed.client.quit();
    clean.client.quit();
  });
});

interface Classifier {
  url: string;
  /** Each request received: its content type and body. */
  received: { type: string | undefined; body: string }[];
  /** The bytes of the last "endless" answer that the socket took before the filter hung up. */
  endless: { written: number; closed: Promise<void> };
  close(): Promise<void>;
}

const SCORES: Record<string, number> = { ham: 0.5, spam: 9.8, quarantine: 6.2 };

/** Writes JSON white space to `response` as fast as it is read, until the reader hangs up; counts what was taken. */
function endlessAnswer(response: ServerResponse, endless: Classifier["endless"]): void {
  const chunk = " ".repeat(65536);
  endless.written = 0;
  endless.closed = new Promise((resolve) => response.once("close", resolve));
  response.writeHead(200, { "content-type": "application/json" }).write("{");
  const pump = (): void => {
    while (!response.destroyed && endless.written < 2 ** 31) {
      endless.written += chunk.length;
      if (!response.write(chunk)) return void response.once("drain", pump);
    }
  };
  pump();
}

/**
 * The classifier service on 127.0.0.1: its verdict is the message's
 * Subject, "error" answers HTTP 500, "nonsense" a JSON that is not a
 * verdict, "hang" nothing at all, "huge" a ham verdict padded to 1 MB, and
 * "endless" white space that never ends.
 */
async function classifier(): Promise<Classifier> {
  const received: Classifier["received"] = [];
  const endless: Classifier["endless"] = { written: 0, closed: Promise.resolve() };
  const server = createServer((request, response) => {
    let body = "";
    request.setEncoding("latin1").on("data", (text: string) => body += text).on("end", () => {
      received.push({ type: request.headers["content-type"], body });
      const subject = /^Subject: (.*)\r$/m.exec(body)?.[1];
      if (subject === "hang") return;
      if (subject === "endless") return endlessAnswer(response, endless);
      if (subject === "huge") {
        return void response.end(JSON.stringify({ verdict: "ham", score: SCORES.ham, pad: "x".repeat(1_000_000) }));
      }
      if (subject === "error") return void response.writeHead(500).end("overloaded");
      const answer = subject === "nonsense" ? { verdict: "maybe" } : { verdict: subject, score: SCORES[subject!] };
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/classify`,
    received,
    endless,
    close: () => {
      server.closeAllConnections(); // the hanging requests
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

describe("classify", () => {
  const TIMEOUT = 700;
  const MAX_BYTES = 4096;
  let service: Classifier;
  let filter: FilterProcess;
  const start = (runtime?: Runtime): Promise<FilterProcess> =>
    example(
      "classify",
      { CLASSIFIER_URL: service.url, CLASSIFIER_TIMEOUT: String(TIMEOUT), MAX_MESSAGE_BYTES: String(MAX_BYTES) },
      runtime,
    );

  beforeAll(async () => {
    service = await classifier();
    filter = await start();
  });
  afterAll(() => service.close());

  /** Pushes one message with this subject through a new connection of `to`. */
  async function send(subject: string, body = "Hello.\r\n", to = filter): ReturnType<MilterClient["message"]> {
    const { client } = await connectFrom(to, "192.0.2.7");
    const result = await client.message({
      from: "<alice@example.org>",
      rcpt: ["<bob@example.net>"],
      headers: [["From", "alice@example.org"], ["Subject", subject]],
      body,
    });
    client.quit();
    return result;
  }

  const TEMPFAIL = {
    action: "replycode",
    smtpCode: 451,
    text: "451 4.3.0 message could not be checked; try again later",
  };

  test("ham gets X-Spam-Score and goes on; the service got the whole message", async () => {
    const result = await send("ham");
    expect(result.reply).toEqual({ action: "continue" });
    expect(result.modifications).toEqual([{ type: "addheader", name: "X-Spam-Score", value: "0.5" }]);
    expect(service.received.at(-1)).toEqual({
      type: "message/rfc822",
      body: "From: alice@example.org\r\nSubject: ham\r\n\r\nHello.\r\n",
    });
  });

  test("spam is refused with 550 and its score", async () => {
    const result = await send("spam");
    expect(result.reply).toEqual({
      action: "replycode",
      smtpCode: 550,
      text: "550 5.7.1 message refused as spam (score 9.8)",
    });
    expect(result.modifications).toEqual([]);
  });

  test("quarantine holds the message with the score, and adds the header", async () => {
    const result = await send("quarantine");
    expect(result.reply).toEqual({ action: "continue" });
    expect(result.modifications).toEqual([
      { type: "quarantine", reason: "classifier score 6.2" },
      { type: "addheader", name: "X-Spam-Score", value: "6.2" },
    ]);
  });

  test.each(["error", "nonsense"])("a service answering %s tempfails with 451", async (subject) => {
    const result = await send(subject);
    expect(result.reply).toEqual(TEMPFAIL);
    expect(result.modifications).toEqual([]);
  });

  test("a service that never answers tempfails with 451 at CLASSIFIER_TIMEOUT, long before callbackTimeout", async () => {
    const [result, elapsed] = await timed(send("hang"));
    expect(result.reply).toEqual(TEMPFAIL);
    expect(elapsed).toBeGreaterThanOrEqual(TIMEOUT - 50);
    expect(elapsed).toBeLessThan(TIMEOUT + 2_500); // callbackTimeout is 8 s
  });

  test("an answer over 64 KiB tempfails with 451, even one that would parse as a verdict", async () => {
    const result = await send("huge");
    expect(result.reply).toEqual(TEMPFAIL);
    expect(result.modifications).toEqual([]);
  });

  test("an answer that never ends tempfails at once, the filter having read no more than its bound", async () => {
    const [result, elapsed] = await timed(send("endless"));
    expect(result.reply).toEqual(TEMPFAIL);
    expect(elapsed).toBeLessThan(TIMEOUT); // not the timeout: the bound ended it
    await service.endless.closed; // the filter hung up
    // What the sockets took in all: the bound and the kernel's buffers, not the stream (unbounded: ~1 GB).
    expect(service.endless.written).toBeLessThan(16 * 1024 * 1024);
  });

  test("only the first MAX_MESSAGE_BYTES of a large message are sent", async () => {
    const result = await send("ham", `${"x".repeat(10_000)}\r\n`);
    expect(result.reply).toEqual({ action: "continue" });
    const { body } = service.received.at(-1)!;
    expect(body.length).toBe(MAX_BYTES);
    expect(body.startsWith("From: alice@example.org\r\nSubject: ham\r\n\r\nxxx")).toBe(true);
  });

  test.each(["deno", "bun"] as const)("runs the same under %s", async (runtime) => {
    const result = await send("ham", "Hello.\r\n", await start(runtime));
    expect(result.reply).toEqual({ action: "continue" });
    expect(result.modifications).toEqual([{ type: "addheader", name: "X-Spam-Score", value: "0.5" }]);
  });
});
