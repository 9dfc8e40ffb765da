/**
 * The milter-test CLI: its pure parts, then the command itself run as a user
 * runs it, against this project's filters and against OpenDKIM (Debian's
 * opendkim), a real third-party milter that signs the message.
 */

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, test } from "vitest";
import { parseClientAddr, parseMacro, parseTimeout, verdict } from "../src/testing/cli.ts";
import { headerValue, parseMessage } from "../src/testing/eml.ts";
import { cli, cliInProcess, type CliRun, RUN_CLI } from "./helpers/cli.ts";
import { type Behaviour, closeFakeMilters, fakeMilter, usual } from "./helpers/fake-milter.ts";
import { killAll, script, startFilter } from "./helpers/filter.ts";
import { ROOT } from "./helpers/runtimes.ts";

const MESSAGE = [
  "From: Alice <alice@example.org>",
  "To: Bob <bob@example.net>, carol@example.net",
  "Subject: hello",
  " folded",
  "Date: Wed, 25 Nov 2026 10:00:00 +0000",
  "",
  "Hi Bob,",
  "this is a test.",
  "",
].join("\n");

const dir = mkdtempSync(join(tmpdir(), "milter-cli-"));
const eml = join(dir, "message.eml");
writeFileSync(eml, MESSAGE);
afterEach(async () => {
  await killAll();
  await closeFakeMilters();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const encode = (text: string): Uint8Array => new TextEncoder().encode(text);
const latin1 = (bytes: Uint8Array): string => new TextDecoder("latin1").decode(bytes);
/** The fields of a parsed message as text, one character per byte. */
const fields = (bytes: Uint8Array): [string, string][] =>
  [...parseMessage(bytes).headers].map(([name, value]) => [latin1(name), latin1(value)]);

describe("reading a message file", () => {
  test("headers in order with folding kept, body with CRLF line ends", () => {
    const parsed = parseMessage(encode(MESSAGE));
    expect(fields(encode(MESSAGE))).toEqual([
      ["From", " Alice <alice@example.org>"],
      ["To", " Bob <bob@example.net>, carol@example.net"],
      ["Subject", " hello\n folded"],
      ["Date", " Wed, 25 Nov 2026 10:00:00 +0000"],
    ]);
    expect(new TextDecoder().decode(parsed.body)).toBe("Hi Bob,\r\nthis is a test.\r\n");
  });

  test("CRLF files (folding as LF, as Postfix sends it), a missing final line end, and no body at all", () => {
    expect(fields(encode("A: 1\r\n\t2\r\nB: 3\r\n\r\n"))).toEqual([["A", " 1\n\t2"], ["B", " 3"]]);
    expect(new TextDecoder().decode(parseMessage(encode("A: 1\r\n\r\nx\r\ny")).body)).toBe("x\r\ny");
    expect(new TextDecoder().decode(parseMessage(encode("A: 1\n\nx\ny\r\n\nz\rw")).body)).toBe("x\r\ny\r\n\r\nz\rw");
    expect(parseMessage(encode("A: 1\n")).body.length).toBe(0);
  });

  test("the bytes of the file, not their UTF-8 reading: 8-bit header values and body stay as they are", () => {
    const file = new Uint8Array([...encode("Subject: caf"), 0xe9, ...encode("\n\nna"), 0xef, 0x76, 0x65, 0x0a]);
    const parsed = parseMessage(file);
    const [[, value]] = [...parsed.headers];
    expect([...value]).toEqual([0x20, 0x63, 0x61, 0x66, 0xe9]);
    expect([...parsed.body]).toEqual([0x6e, 0x61, 0xef, 0x76, 0x65, 0x0d, 0x0a]);
  });

  test("a line that is not a header field, or holds a NUL, is an error naming the line", () => {
    expect(() => parseMessage(encode("A: 1\nnot a header\n\nbody"))).toThrow(/line 2: not a header/);
    expect(() => parseMessage(encode(" starts folded\n"))).toThrow(/line 1: a continuation/);
    expect(() => parseMessage(encode("A: 1\nX-A\0B: 2\n"))).toThrow(/line 2: a NUL byte.*"X-A\\x00B: 2"/);
    expect(() => parseMessage(encode("A: 1\nB: x\0y\n"))).toThrow(/line 2: a NUL byte/);
    expect(() => parseMessage(new Uint8Array([0x41, 0xe9, 0x3a, 0x20, 0x31]))).toThrow(/line 1: not a header.*A\\xe9:/);
  });

  test("header values lose their leading space unless HDR_LEADSPC was negotiated", () => {
    expect(latin1(headerValue(encode(" \thello"), false))).toBe("hello");
    expect(latin1(headerValue(encode(" hello"), true))).toBe(" hello");
  });
});

describe("options and verdicts", () => {
  test("macros default to the connect stage", () => {
    expect(parseMacro("j=mx.example")).toEqual(["connect", "j", "mx.example"]);
    expect(parseMacro("eom:{t}=a=b")).toEqual(["eom", "{t}", "a=b"]);
    expect(() => parseMacro("rcpt:i=1")).toThrow(/not one of/);
    expect(() => parseMacro("novalue")).toThrow(/not \[stage:\]name=value/);
  });

  test("client addresses", () => {
    expect(parseClientAddr("192.0.2.1", 25)).toEqual({ family: "inet", address: "192.0.2.1", port: 25 });
    expect(parseClientAddr("2001:db8::1", 0)).toEqual({ family: "inet6", address: "2001:db8::1", port: 0 });
    expect(parseClientAddr("unix:/run/x", 0)).toEqual({ family: "unix", path: "/run/x" });
    expect(parseClientAddr("none", 0)).toBeNull();
    for (const bad of ["mx.example", "999.999.999.999", "1.2.3", "foo:bar", "::g", "unix:"]) {
      expect(() => parseClientAddr(bad, 0), bad).toThrow(/not an IPv4/);
    }
  });

  test("macros of every stage, named as libmilter names them", () => {
    expect(parseMacro("header:i=1")).toEqual(["header", "i", "1"]);
    expect(parseMacro("body:{x}=")).toEqual(["body", "{x}", ""]);
    expect(parseMacro("{a:b}=c")).toEqual(["connect", "{a:b}", "c"]);
    for (const bad of ["Eom:i=1", "eom:=x", "=x", "ab=1", "{open=1", "rcpt:i=1"]) {
      expect(() => parseMacro(bad), bad).toThrow(/stage|name/);
    }
  });

  test("timeouts: a plain positive number of seconds", () => {
    expect(parseTimeout("2.5")).toBe(2500);
    expect(parseTimeout("3000000")).toBe(3e9);
    for (const bad of ["1e309", "Infinity", "0", "-1", "1e3", "", "9".repeat(400)]) {
      expect(() => parseTimeout(bad), bad).toThrow(/not a positive number of seconds/);
    }
  });

  test("a bad --timeout, --client-addr or --macro is bad usage (64), before any milter is asked", async () => {
    const spec = `unix:${join(dir, "absent.sock")}`; // unreachable: an accepted option would exit 1 there
    for (
      const args of [
        ["--timeout", "1e309"],
        ["--timeout", "Infinity"],
        ["--client-addr", "999.999.999.999"],
        ["--client-addr", "foo:bar"],
        ["--macro", "Eom:i=1"],
        ["--macro", "eom:=x"],
      ]
    ) {
      const result = await cliInProcess([...args, spec, eml]);
      expect(result.code, args.join(" ")).toBe(64);
      expect(result.stderr).toContain(args[0]);
    }
  });

  test.each(
    [
      [{ action: "continue" }, [], "accepted"],
      [{ action: "accept" }, [{ type: "quarantine", reason: "x" }], "quarantined"],
      [{ action: "reject" }, [], "rejected"],
      [{ action: "replycode", smtpCode: 550, text: "550 5.7.1 no" }, [], "rejected"],
      [{ action: "replycode", smtpCode: 451, text: "451 4.7.1 later" }, [], "tempfailed"],
      [{ action: "tempfail" }, [], "tempfailed"],
      [{ action: "discard" }, [], "discarded"],
    ] as const,
  )("%j with %j is %s", (reply, modifications, expected) => {
    expect(verdict(reply, modifications)).toBe(expected);
  });
});

describe("milter-test against this project's filters", () => {
  test("a stamping filter: the header it adds, exit code 0, from a file and from stdin", async () => {
    const filter = await startFilter({ fixture: "stamp.ts" });
    const fromFile = await cli(["--client-host", "mx.example", filter.spec, eml]);
    expect(fromFile.stderr).toBe("");
    expect(fromFile.code).toBe(0);
    expect(fromFile.stdout).toContain("envrcpt  continue (×2)");
    expect(fromFile.stdout).toContain("addheader X-Stamp: mx.example");
    expect(fromFile.stdout).toMatch(/verdict: accepted\n$/);
    const fromStdin = await cli(["--json", filter.spec], MESSAGE);
    expect(fromStdin.code).toBe(0);
    const report = JSON.parse(fromStdin.stdout);
    expect(report.modifications).toEqual([{ type: "addheader", name: "X-Stamp", value: "localhost" }]);
    expect(report.verdict).toBe("accepted");
  });

  test.each(["deno", "bun"] as const)("the same command under %s", async (runtime) => {
    const filter = await startFilter({ fixture: "stamp.ts" });
    const result = await cli([filter.spec], MESSAGE, runtime);
    expect(result.stderr).toBe("");
    expect(result.stdout).toContain("addheader X-Stamp: localhost");
    expect(result.code).toBe(0);
  });

  test("what the filter sees: envelope, client, HELO, macros, headers and body", async () => {
    const filter = await startFilter({ env: { QUIET: "0" } });
    const { code } = await cli([
      ...["--client-host", "client.example", "--client-addr", "192.0.2.7", "--client-port", "4242"],
      ...["--helo", "helo.example", "--from", "<bounce@example.org>", "--rcpt", "<x@example.net>"],
      ...["--macro", "{daemon_name}=mta", "--macro", "eom:{t_note}=at eom"],
      filter.spec,
      eml,
    ]);
    expect(code).toBe(0);
    const seen = (cb: string): unknown[] => filter.callbacks(cb)[0].args;
    expect(seen("connect")).toEqual(["client.example", { family: "inet", address: "192.0.2.7", port: 4242 }]);
    expect(seen("helo")).toEqual(["helo.example"]);
    expect(seen("envfrom")).toEqual(["<bounce@example.org>", []]);
    expect(filter.callbacks("envrcpt").map((e) => e.args[0])).toEqual(["<x@example.net>"]);
    expect(filter.callbacks("header").map((e) => e.args)).toEqual([
      ["From", "Alice <alice@example.org>"],
      ["To", "Bob <bob@example.net>, carol@example.net"],
      ["Subject", "hello\n folded"],
      ["Date", "Wed, 25 Nov 2026 10:00:00 +0000"],
    ]);
    expect(filter.callbacks("connect")[0].macros["{daemon_name}"]).toBe("mta");
    expect(filter.callbacks("eom")[0].macros["{t_note}"]).toBe("at eom");
    expect(filter.callbacks("eom")[0].macros.i).toMatch(/^[0-9A-F]{10}$/);
  });

  test.each([
    ["a rejected recipient exits 2", "envrcpt", { stat: "Reject" }, 2, "envrcpt  reject (×2)", "rejected"],
    [
      "a custom 550 reply exits 2",
      "envfrom",
      { reply: ["550", "5.7.1", "go away"], stat: "Reject" },
      2,
      "replycode 550 5.7.1 go away",
      "rejected",
    ],
    ["a tempfail exits 3", "eom", { stat: "Tempfail" }, 3, "eom      tempfail", "tempfailed"],
    ["a discard exits 4", "eom", { stat: "Discard" }, 4, "eom      discard", "discarded"],
    [
      "a quarantine exits 5",
      "eom",
      { actions: [["quarantine", "suspicious"]] },
      5,
      "quarantine suspicious",
      "quarantined",
    ],
  ])("%s", async (_name, stage, instruction, code, line, outcome) => {
    const filter = await startFilter({ env: { FLAGS: "QUARANTINE" } });
    const macro = `${stage}:${Object.keys(script({ [stage]: instruction }))[0]}=${JSON.stringify(instruction)}`;
    const result = await cli(["--macro", macro, filter.spec, eml]);
    expect(result.stdout).toContain(line);
    expect(result.stdout).toContain(`verdict: ${outcome}`);
    expect(result.code).toBe(code);
  });

  test("bad usage and unreachable milters are errors, not verdicts", async () => {
    expect((await cli([])).code).toBe(64);
    expect((await cli(["--actions", "ADDHDRS,NOPE", "unix:/x", eml])).stderr).toContain('unknown action "NOPE"');
    const missing = await cli([`unix:${join(dir, "absent.sock")}`, eml]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("cannot reach the milter");
    const noRcpt = await cli(["unix:/x"], "Subject: none\n\nbody\n");
    expect(noRcpt.code).toBe(64);
    expect(noRcpt.stderr).toContain("no recipient");
  });
});

describe("milter-test: what an MTA would do and show", () => {
  test("a malformed socket spec is bad usage (64)", async () => {
    for (const spec of ["tcp:25@localhost", "inet:port@localhost"]) {
      const result = await cli([spec, eml]);
      expect(result.stderr).toMatch(/unknown milter socket spec|bad port/);
      expect(result.code).toBe(64);
    }
  });

  test("--timeout beyond what a timer holds still waits (no overflow into an immediate timeout)", async () => {
    const filter = await startFilter({ env: { SLOW_MS: "300" } });
    const result = await cli(["--timeout", "3000000", filter.spec, eml]);
    expect(result.stderr).toBe("");
    expect(result.stdout).toContain("verdict: accepted");
    expect(result.code).toBe(0);
  });

  test("reply text shows % where the milter doubled it, as the MTA shows it", async () => {
    const instruction = { reply: ["451", "4.7.1", "try again, 100%% sure"], stat: "Tempfail" };
    const filter = await startFilter();
    const macro = `eom:${Object.keys(script({ eom: instruction }))[0]}=${JSON.stringify(instruction)}`;
    const text = await cli(["--macro", macro, filter.spec, eml]);
    expect(text.stdout).toContain("eom      replycode 451 4.7.1 try again, 100% sure\n");
    expect(text.code).toBe(3);
    const json = JSON.parse((await cli(["--json", "--macro", macro, filter.spec, eml])).stdout);
    expect(json.replies.at(-1).reply.text).toBe("451 4.7.1 try again, 100% sure");
  });

  test("accept at connect ends the exchange: nothing more is sent", async () => {
    const filter = await startFilter();
    const macro = `connect:${Object.keys(script({ connect: {} }))[0]}=${JSON.stringify({ stat: "Accept" })}`;
    const result = await cli(["--macro", macro, filter.spec, eml]);
    expect(result.stdout).toContain("connect  accept\n");
    expect(result.stdout).not.toMatch(/^(helo|envfrom|eom) /m);
    expect(result.stdout).toMatch(/verdict: accepted\n$/);
    expect(result.code).toBe(0);
  });
});

/** Runs the CLI under /usr/bin/time: its exit code, output, peak RSS in bytes, and seconds taken. */
async function measured(args: string[]): Promise<CliRun & { rss: number; seconds: number }> {
  const report = join(dir, "time.txt");
  const started = Date.now();
  const result = await new Promise<CliRun>((resolve, reject) => {
    const child = spawn("/usr/bin/time", ["-f", "%M", "-o", report, ...RUN_CLI.node, ...args], { cwd: ROOT });
    let stdout = "", stderr = "";
    child.stdout.setEncoding("utf8").on("data", (t: string) => (stdout += t));
    child.stderr.setEncoding("utf8").on("data", (t: string) => (stderr += t));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
  return { ...result, rss: Number(readFileSync(report, "utf8").trim()) * 1024, seconds: (Date.now() - started) / 1000 };
}

describe("milter-test on large and hostile files", () => {
  const MB = 1_000_000;
  const LINES = Math.floor(50 * MB / 77); // base64 lines of 76 characters and a LF

  test.each([
    ["empty lines", "\n".repeat(50 * MB), 2 * (50 * MB - 1)], // the first ends the headers
    ["a base64 body", `Subject: b\n\n${`${"QUJD".repeat(19)}\n`.repeat(LINES)}`, 78 * LINES],
  ])("a 50 MB file of %s: memory bounded by the file, not its line count", async (_name, content, bodyBytes) => {
    const file = join(dir, "large.eml");
    writeFileSync(file, content);
    const filter = await startFilter({ fixture: "stamp.ts", env: { PIPELINE: "1" } });
    const result = await measured(["--rcpt", "<b@example.net>", "--json", filter.spec, file]);
    rmSync(file);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const stamp = JSON.parse(result.stdout).modifications.find((m: { name?: string }) => m.name === "X-Stamp");
    expect(JSON.parse(stamp.value).bytes).toBe(bodyBytes); // all of it, LF as CRLF
    // What the CLI costs with no message, the file, the body as sent (once more where LF became CRLF), 40 MB more.
    const idle = (await measured(["--help"])).rss;
    expect(result.rss).toBeLessThan(idle + content.length + (bodyBytes === content.length ? 0 : bodyBytes) + 40 * MB);
    expect(result.seconds).toBeLessThan(30);
  }, 120_000);

  test("200,000 headers through a pipelining filter: every one sent, the verdict kept", async () => {
    const headers = Array.from({ length: 200_000 }, (_, i) => `X-H-${i}: ${i}\n`).join("");
    const file = join(dir, "headers.eml");
    writeFileSync(file, `To: b@example.net\n${headers}\nbody\n`);
    const filter = await startFilter({ fixture: "stamp.ts", env: { PIPELINE: "1" } });
    const result = await cli([filter.spec, file]);
    expect(result.stderr).toBe("");
    expect(result.stdout).toContain("header   noreply (×200001)");
    expect(result.stdout).toMatch(/addheader X-Stamp: .*"headers":200001/);
    expect(result.code).toBe(0);
  }, 120_000);

  test.each(["node", "deno", "bun"] as const)(
    "under %s, a reader that goes away (| head -c 100) leaves the verdict's exit code, no stack",
    async (runtime) => {
      const filter = await startFilter({ fixture: "stamp.ts" });
      const headers = Array.from({ length: 5000 }, (_, i) => `X-H-${i}: ${i}`).join("\n");
      writeFileSync(join(dir, "many.eml"), `To: b@example.net\n${headers}\n\nbody\n`); // a report far over a pipe's buffer
      const command = [...RUN_CLI[runtime], "--json", filter.spec, join(dir, "many.eml")].map((a) => `'${a}'`).join(
        " ",
      );
      const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn("bash", ["-c", `${command} | head -c 100 >/dev/null; exit \${PIPESTATUS[0]}`], {
          cwd: ROOT,
        });
        let stderr = "";
        child.stderr.setEncoding("utf8").on("data", (t: string) => (stderr += t));
        child.on("close", (code) => resolve({ code, stderr }));
      });
      expect(result.stderr).toBe("");
      expect(result.code).toBe(0);
    },
  );

  test("a header over 64 KiB: the error says libmilter refuses a command that long; 65,535 bytes pass", async () => {
    const filter = await startFilter();
    const file = join(dir, "long-header.eml");
    const send = (valueBytes: number): Promise<CliRun> => {
      writeFileSync(file, `To: b@example.net\nX-Long: ${"x".repeat(valueBytes)}\n\nbody\n`);
      return cli([filter.spec, file]);
    };
    expect((await send(65535 - "X-Long\0\0".length)).code).toBe(0); // the header command: name, NUL, value, NUL
    const result = await send(70_000);
    expect(result.stderr).toMatch(
      /milter closed the connection.*after a header command of 70008 bytes: libmilter reads at most 65535 bytes/,
    );
    expect(result.stdout).not.toContain("verdict");
    expect(result.code).toBe(1);
  });
});

describe("what the milter receives is what the file holds", () => {
  /** A fake milter that records every command's payload, by letter, and answers as usual. */
  async function recorder(): Promise<{ spec: string; seen: Record<string, Uint8Array[]> }> {
    const seen: Record<string, Uint8Array[]> = {};
    const record: Behaviour = (send, socket, frame) => {
      (seen[frame.code] ??= []).push(frame.data);
      usual(frame.code, send, socket);
    };
    const spec = await fakeMilter(
      join(dir, "recorder.sock"),
      Object.fromEntries([..."CHMRTLNBE"].map((c) => [c, record])),
    );
    return { spec, seen };
  }
  const text = (data: Uint8Array): string => latin1(data);

  test("8-bit header bytes are sent as the file holds them, not as U+FFFD", async () => {
    const { spec, seen } = await recorder();
    const file = new Uint8Array([...encode("To: b@example.net\nSubject: caf"), 0xe9, ...encode("\n\nbody\n")]);
    const result = await cliInProcess([spec, "-"], file);
    expect(result.code).toBe(0);
    expect(seen.L.map(text)).toEqual(["To\0b@example.net\0", "Subject\0caf\xe9\0"]);
  });

  test("a NUL in a header is refused with the line, not sent to shift the fields", async () => {
    const { spec, seen } = await recorder();
    const result = await cliInProcess([spec, "-"], encode("To: b@example.net\nX-A\0B: 1\n\nbody\n"));
    expect(result.stderr).toMatch(/line 2: a NUL byte/);
    expect(result.code).toBe(1);
    expect(seen.L).toBeUndefined();
  });

  test("envelope addresses come from an RFC 5322 parser: quoted local parts, groups", async () => {
    const { spec, seen } = await recorder();
    const to = 'To: "quoted@local"@q.example, Team: a@x.org, B <b@y.org>;\nCc: (c) c@z.example\n';
    const result = await cliInProcess([spec, "-"], encode(`From: "Al Ice" <al@example.org>\n${to}\nbody\n`));
    expect(result.code).toBe(0);
    expect(seen.M.map(text)).toEqual(["<al@example.org>\0"]);
    expect(seen.R.map(text)).toEqual(['<"quoted@local"@q.example>\0', "<a@x.org>\0", "<b@y.org>\0", "<c@z.example>\0"]);
  });

  test.each(["bad@@x", "@", "a@b;", "ok@example.org, bad@@x"])(
    "To: %s is not guessed at: bad usage naming the header",
    async (value) => {
      const { spec, seen } = await recorder();
      const result = await cliInProcess([spec, "-"], encode(`To: ${value}\n\nbody\n`));
      expect(result.stderr).toMatch(/the To: header .* is not an RFC 5322 address list.*: give --rcpt/);
      expect(result.code).toBe(64);
      expect(seen.R).toBeUndefined();
    },
  );
});

describe("milter-test against OpenDKIM, a third-party milter", () => {
  test("OpenDKIM signs the message, and its body hash is of the body the CLI sent", async () => {
    const keys = mkdtempSync(join(tmpdir(), "milter-dkim-"));
    const socket = join(keys, "dkim.sock");
    execFileSync("opendkim-genkey", ["-D", keys, "-d", "example.org", "-s", "test"]);
    writeFileSync(
      join(keys, "opendkim.conf"),
      [
        "Mode s",
        "Domain example.org",
        "Selector test",
        `KeyFile ${join(keys, "test.private")}`,
        `Socket local:${socket}`,
        "Syslog no",
        "Background no",
        "RequireSafeKeys false", // the key lives under /tmp, which others can write
        "Canonicalization simple/simple",
      ].join("\n"),
    );
    const opendkim = spawn("opendkim", ["-f", "-x", join(keys, "opendkim.conf")], { stdio: "inherit" });
    try {
      for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 100));
      const result = await cli(["--json", `unix:${socket}`, eml]);
      expect(result.stderr).toBe("");
      expect(result.code).toBe(0);
      const report = JSON.parse(result.stdout);
      expect(report.negotiated.steps).toContain("HDR_LEADSPC");
      const signature = report.modifications.find((m: { name?: string }) => m.name === "DKIM-Signature");
      expect(signature.type).toBe("insheader");
      const tags = Object.fromEntries(
        signature.value.replace(/\s+/g, "").split(";").filter(Boolean).map((t: string) => t.split(/=(.*)/s, 2)),
      );
      expect(tags).toMatchObject({ v: "1", a: "rsa-sha256", c: "simple/simple", d: "example.org", s: "test" });
      // simple body canonicalization: the body as sent, CRLF line ends.
      const sent = "Hi Bob,\r\nthis is a test.\r\n";
      expect(tags.bh).toBe(createHash("sha256").update(sent).digest("base64"));
      expect(tags.h.toLowerCase().split(":")).toEqual(expect.arrayContaining(["from", "to", "subject", "date"]));
    } finally {
      opendkim.kill("SIGKILL");
      rmSync(keys, { recursive: true, force: true });
    }
  });
});
