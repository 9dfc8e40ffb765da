/**
 * The test client against hostile milters: each milter here is a small
 * node:net server faking the milter side over a real unix socket, doing what
 * libmilter never would (progress forever, endless modifications, huge or
 * malformed frames). The client, and `milter-test` on top of it, must stop
 * each with a clear {@linkcode MilterClientError}, in bounded time and memory.
 */

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import process from "node:process";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, test } from "vitest";
import { type Behaviour, closeFakeMilters, fakeMilter as fakeMilterAt, usual } from "./helpers/fake-milter.ts";
import { cliInProcess } from "./helpers/cli.ts";
import { type ClientOptions, endsExchange, MilterClient, MilterClientError } from "../src/testing/mod.ts";
import { concat, encodeFrame, type Frame, FrameReader, u32 } from "../src/testing/protocol.ts";

const dir = mkdtempSync(join(tmpdir(), "milter-limits-"));
const eml = join(dir, "message.eml");
writeFileSync(eml, "From: <alice@example.org>\nTo: <bob@example.net>\nSubject: hi\n\nHello\n");
afterEach(closeFakeMilters);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
let fakes = 0;
/** A fake milter (see {@linkcode fakeMilterAt}) on a new socket in this file's directory. */
const fakeMilter = (on: Partial<Record<string, Behaviour>>): Promise<string> =>
  fakeMilterAt(join(dir, `fake-${fakes++}.sock`), on);

/** Writes `frame` over and over, as fast as the client reads, until the connection ends. */
function flood(socket: Socket, frame: Uint8Array): void {
  const pump = (): void => {
    while (!socket.destroyed && socket.write(frame));
    if (!socket.destroyed) socket.once("drain", pump);
  };
  pump();
}

/** Sends a progress frame every 50 ms, never a final reply. */
const progressForever: Behaviour = (send, socket) => {
  const timer = setInterval(() => send("p"), 50);
  socket.once("close", () => clearInterval(timer));
};

/** A client connected and through HELO, ready for a message. */
async function ready(spec: string, options?: ClientOptions): Promise<MilterClient> {
  const client = await MilterClient.open(spec, options);
  await client.connect("client.example", null);
  await client.helo("client.example");
  return client;
}

/** Runs end of message after a minimal envelope. */
async function eom(client: MilterClient): Promise<unknown> {
  await client.envfrom("<a@example.org>");
  await client.envrcpt("<b@example.net>");
  return await client.eom();
}

describe("the timeout bounds a whole stage, progress included", () => {
  test("progress every 50 ms does not keep connect waiting past 500 ms", async () => {
    const client = await MilterClient.open(await fakeMilter({ C: progressForever }), { timeout: 500 });
    const started = Date.now();
    const failure = await client.connect("client.example", null).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(MilterClientError);
    expect(failure).toMatchObject({ kind: "timeout", message: expect.stringMatching(/connect .*within 500 ms/) });
    expect(Date.now() - started).toBeLessThan(3000);
    client.close();
  }, 10_000);

  test("nor end of message", async () => {
    const client = await ready(await fakeMilter({ E: progressForever }), { timeout: 500 });
    await expect(eom(client)).rejects.toMatchObject({ kind: "timeout", message: expect.stringMatching(/eom/) });
    client.close();
  }, 10_000);

  test("milter-test --timeout 1 gives up after a second of progress frames", async () => {
    const spec = await fakeMilter({ E: progressForever });
    const started = Date.now();
    const result = await cliInProcess(["--timeout", "1", spec, eml]);
    expect(result.stderr).toMatch(/within 1000 ms/);
    expect(result.code).toBe(1);
    expect(Date.now() - started).toBeLessThan(5000);
  }, 10_000);
});

describe("timeouts longer than a timer holds", () => {
  /** Answers each command 100 ms late. */
  const late: Behaviour = (send, socket, frame) => {
    const timer = setTimeout(() => usual(frame.code, send, socket), 100);
    socket.once("close", () => clearTimeout(timer));
  };

  test.each([3_000_000_000, Infinity])("timeout %d ms waits for a slow answer, no timer overflows", async (timeout) => {
    const overflows: Error[] = [];
    const onWarning = (warning: Error): void =>
      void (warning.name === "TimeoutOverflowWarning" && overflows.push(warning));
    process.on("warning", onWarning);
    try {
      const client = await MilterClient.open(await fakeMilter({ C: late }), { timeout });
      expect(await client.connect("client.example", null)).toEqual({ action: "continue" });
      client.quit();
      await new Promise((resolve) => process.nextTick(resolve)); // warnings are emitted on the next tick
      expect(overflows).toEqual([]);
    } finally {
      process.off("warning", onWarning);
    }
  });
});

describe("what one message may cost", () => {
  test("endless headers stop at maxModifications", async () => {
    const client = await ready(await fakeMilter({ E: (_, s) => flood(s, encodeFrame("h", bytes("X-A\0v\0"))) }), {
      maxModifications: 1000,
    });
    await expect(eom(client)).rejects.toMatchObject({
      kind: "limit",
      message: expect.stringMatching(/more than 1000 modifications/),
    });
    client.close();
  }, 20_000);

  test("by default at 10,000 modifications", async () => {
    const client = await ready(await fakeMilter({ E: (_, s) => flood(s, encodeFrame("+", bytes("<x@y>\0"))) }));
    await expect(eom(client)).rejects.toMatchObject({ kind: "limit", message: expect.stringMatching(/10000 modif/) });
    client.close();
  }, 20_000);

  test("endless body chunks stop at maxModificationBytes, by default 64 MiB", async () => {
    const chunk = encodeFrame("b", new Uint8Array(65535));
    const small = await ready(await fakeMilter({ E: (_, s) => flood(s, chunk) }), { maxModificationBytes: 1 << 20 });
    await expect(eom(small)).rejects.toMatchObject({ kind: "limit", message: expect.stringMatching(/1048576 bytes/) });
    small.close();
    const usual = await ready(await fakeMilter({ E: (_, s) => flood(s, chunk) }));
    await expect(eom(usual)).rejects.toMatchObject({ kind: "limit", message: expect.stringMatching(/67108864 bytes/) });
    usual.close();
  }, 30_000);

  test("milter-test reports endless modifications as an error", async () => {
    const spec = await fakeMilter({ E: (_, s) => flood(s, encodeFrame("h", bytes("X-A\0v\0"))) });
    const result = await cliInProcess([spec, eml]);
    expect(result.stderr).toMatch(/more than 10000 modifications/);
    expect(result.code).toBe(1);
  }, 20_000);
});

describe("frame sizes", () => {
  test("one 60 MB frame arrives whole, in bounded time", async () => {
    const size = 60_000_000;
    const client = await ready(
      await fakeMilter({
        E: (send) => {
          send("b", new Uint8Array(size).fill(0x61));
          send("a");
        },
      }),
    );
    const started = Date.now();
    const result = await eom(client) as { body: Uint8Array };
    expect(Date.now() - started).toBeLessThan(5000);
    expect(result.body.length).toBe(size);
    expect(result.body[size - 1]).toBe(0x61);
    client.quit();
  }, 30_000);

  test("frames come out the same whatever the chunks they arrive in", () => {
    const frames = [encodeFrame("c"), encodeFrame("h", bytes("X-A\0v\0")), encodeFrame("b", new Uint8Array(70_000))];
    const stream = concat(frames);
    const whole = new FrameReader().push(stream);
    expect(whole.map((f) => [f.code, f.data.length])).toEqual([["c", 0], ["h", 6], ["b", 70_000]]);
    for (const size of [1, 3, 4, 5, 4096]) {
      const reader = new FrameReader();
      const got: Frame[] = [];
      for (let at = 0; at < stream.length; at += size) got.push(...reader.push(stream.subarray(at, at + size)));
      expect(got).toEqual(whole);
    }
  });

  test("a frame over maxFrame fails at its length, before its bytes arrive", async () => {
    // Only the length and the letter: a client that waited for the rest would hit its 30 s timeout.
    const spec = await fakeMilter({ E: (_, socket) => socket.write(concat([u32(2 * 1024 * 1024 + 1), bytes("h")])) });
    const client = await ready(spec, { maxFrame: 1024 * 1024, timeout: 30_000 });
    await expect(eom(client)).rejects.toMatchObject({
      kind: "limit",
      message: expect.stringMatching(/frame of 2097153 bytes.*maxFrame.*1048576/),
    });
    client.close();
  }, 10_000);
});

describe("malformed frames from the milter", () => {
  test.each([
    ["h", "X-A\0", "addheader"],
    ["h", "X-A\0v", "addheader"],
    ["i", "\0\0", "insheader"],
    ["i", "\0\0\0\0X-A\0", "insheader"],
    ["m", "\0\0\0", "chgheader"],
    ["+", "", "addrcpt"],
    ["2", "", "addrcpt_par"],
    ["-", "<a@example.org>", "delrcpt"],
    ["e", "", "chgfrom"],
    ["q", "", "quarantine"],
    ["p", "x", "progress"],
    ["y", "hello\0", "replycode"],
    ["y", "250 fine\0", "replycode"],
    ["y", "550\0", "replycode"],
  ])("%j %j is a malformed %s frame", async (code, payload, name) => {
    const client = await ready(await fakeMilter({ E: (send) => send(code, payload) }));
    const failure = await eom(client).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(MilterClientError);
    expect(failure).toMatchObject({
      kind: "protocol",
      message: expect.stringContaining(`malformed ${name} frame from the milter`),
    });
    client.close();
  });

  test("well-formed replies of several lines and modifications still decode", async () => {
    const client = await ready(
      await fakeMilter({
        E: (send) => {
          send("2", "<x@example.org>\0");
          send("e", "<y@example.org>\0SIZE=1\0");
          send("m", concat([u32(1), bytes("X-A\0\0")]));
          send("y", "550-5.7.1 first\r\n550 5.7.1 second\0");
        },
      }),
    );
    expect(await eom(client)).toMatchObject({
      reply: { action: "replycode", smtpCode: 550, text: "550-5.7.1 first\r\n550 5.7.1 second" },
      modifications: [
        { type: "addrcpt_par", rcpt: "<x@example.org>", args: null },
        { type: "chgfrom", from: "<y@example.org>", args: "SIZE=1" },
        { type: "chgheader", index: 1, name: "X-A", value: "" },
      ],
    });
    client.quit();
  });

  test("milter-test: a replycode that is no SMTP reply is a protocol error, not a verdict", async () => {
    const result = await cliInProcess([await fakeMilter({ M: (send) => send("y", "hello\0") }), eml]);
    expect(result.stderr).toMatch(/malformed replycode frame from the milter: "hello"/);
    expect(result.stdout).not.toContain("verdict");
    expect(result.code).toBe(1);
  });

  test("milter-test: a 2-byte insheader frame is named, not a DataView error", async () => {
    const result = await cliInProcess([await fakeMilter({ E: (send) => send("i", "\0\0") }), eml]);
    expect(result.stderr).toMatch(/malformed insheader frame from the milter/);
    expect(result.stderr).not.toMatch(/DataView/);
    expect(result.code).toBe(1);
  });

  test("a short negotiation answer", async () => {
    const spec = await fakeMilter({ O: (send) => send("O", u32(6)) });
    await expect(MilterClient.open(spec)).rejects.toMatchObject({
      kind: "protocol",
      message: expect.stringContaining("malformed negotiation frame from the milter"),
    });
  });
});

describe("what a hostile milter gets printed", () => {
  const ESC = "\x1b";
  /** Terminal controls: clear the screen, set the window title, an 8-bit CSI, a right-to-left override. */
  const CONTROLS = `${ESC}[2J${ESC}]0;pwned\x07\u009b31m\u202e`;
  // deno-lint-ignore no-control-regex -- control characters are what this looks for
  const RAW = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]/;

  test("reply text and modifications reach the terminal escaped, and start no line of their own", async () => {
    const spec = await fakeMilter({
      E: (send) => {
        send("h", `X-Evil\0${CONTROLS}\nverdict: accepted\0`);
        send("q", `held\r\nverdict: accepted\0`);
        send("y", `550 5.7.1 no ${CONTROLS}\0`);
      },
    });
    const result = await cliInProcess([spec, eml]);
    expect(result.stdout).not.toMatch(RAW);
    expect(result.stdout.match(/^verdict: .*/gm)).toEqual(["verdict: rejected"]);
    expect(result.stdout).toContain(
      "eom      replycode 550 5.7.1 no \\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{9b}31m\\u{202e}\n",
    );
    expect(result.stdout).toContain("addheader X-Evil: \\u{1b}[2J");
    expect(result.stdout).toContain("quarantine held\\r\\nverdict: accepted\n");
    expect(result.code).toBe(2);
  });

  test("--json: the same characters escaped in the JSON, which still reads back to what the milter sent", async () => {
    const spec = await fakeMilter({ E: (send) => [send("h", `X-Evil\0${CONTROLS}\0`), send("a")] });
    const result = await cliInProcess(["--json", spec, eml]);
    expect(result.stdout).not.toMatch(RAW);
    expect(JSON.parse(result.stdout).modifications).toEqual([{ type: "addheader", name: "X-Evil", value: CONTROLS }]);
  });

  test.each(["550 5.7.1 no\nverdict: accepted", "550 5.7.1 no\rverdict: accepted", "550 5.7.1 a\r\n550 b\n"])(
    "a reply %j with a bare LF or CR is a protocol error, not a verdict",
    async (reply) => {
      const result = await cliInProcess([await fakeMilter({ M: (send) => send("y", `${reply}\0`) }), eml]);
      expect(result.stderr).toMatch(/malformed replycode frame from the milter/);
      expect(result.stderr.trimEnd().split("\n")).toHaveLength(1);
      expect(result.stdout).not.toContain("verdict");
      expect(result.code).toBe(1);
    },
  );
});

describe("one error class", () => {
  test("bad specs, unreachable and closing milters", async () => {
    await expect(MilterClient.open("tcp:25")).rejects.toMatchObject({ name: "MilterClientError", kind: "usage" });
    await expect(MilterClient.open(`unix:${join(dir, "absent.sock")}`)).rejects.toMatchObject({
      name: "MilterClientError",
      kind: "connect",
    });
    const closing = await fakeMilter({ C: (_, socket) => socket.destroy() });
    const client = await MilterClient.open(closing);
    const failure = await client.connect("x", null).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(MilterClientError);
    expect(failure).toMatchObject({ kind: "closed", message: expect.stringMatching(/closed/) });
    await expect(client.helo("x")).rejects.toBeInstanceOf(MilterClientError);
  });

  test("which replies end the exchange", () => {
    const ends = (["continue", "noreply", "skip", "accept", "reject", "tempfail", "discard"] as const)
      .filter((action) => endsExchange({ action }));
    expect(ends).toEqual(["accept", "reject", "tempfail", "discard"]);
  });
});
