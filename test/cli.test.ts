/**
 * The milter-test CLI: its pure parts, then the command itself run as a user
 * runs it, against this project's filters and against OpenDKIM (Debian's
 * opendkim), a real third-party milter that signs the message.
 */

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, test } from "vitest";
import { parseClientAddr, parseMacro, verdict } from "../src/testing/cli.ts";
import { addresses, headerValue, parseMessage } from "../src/testing/eml.ts";
import { killAll, script, startFilter } from "./helpers/filter.ts";
import { ROOT, runtimeBinary } from "./helpers/runtimes.ts";

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
afterEach(killAll);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** How each runtime runs the CLI; Deno with the permissions the README names. */
const RUN_CLI = {
  node: [process.execPath, "--import", "tsx", "bin/milter-test.ts"],
  deno: [runtimeBinary("deno"), "run", "--allow-net", "--allow-read", "--allow-write", "bin/milter-test.ts"],
  bun: [runtimeBinary("bun"), "bin/milter-test.ts"],
};

/** Runs the CLI as a process; resolves with its exit code and output. */
function cli(
  args: string[],
  stdin?: string,
  runtime: keyof typeof RUN_CLI = "node",
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const [cmd, ...pre] = RUN_CLI[runtime];
    const child = spawn(cmd, [...pre, ...args], { cwd: ROOT });
    let stdout = "", stderr = "";
    child.stdout.setEncoding("utf8").on("data", (t: string) => (stdout += t));
    child.stderr.setEncoding("utf8").on("data", (t: string) => (stderr += t));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin ?? "");
  });
}

describe("reading a message file", () => {
  test("headers in order with folding kept, body with CRLF line ends", () => {
    const parsed = parseMessage(new TextEncoder().encode(MESSAGE));
    expect(parsed.headers).toEqual([
      ["From", " Alice <alice@example.org>"],
      ["To", " Bob <bob@example.net>, carol@example.net"],
      ["Subject", " hello\n folded"],
      ["Date", " Wed, 25 Nov 2026 10:00:00 +0000"],
    ]);
    expect(new TextDecoder().decode(parsed.body)).toBe("Hi Bob,\r\nthis is a test.\r\n");
  });

  test("CRLF files, a missing final line end, and no body at all", () => {
    expect(new TextDecoder().decode(parseMessage(new TextEncoder().encode("A: 1\r\n\r\nx\r\ny")).body)).toBe("x\r\ny");
    expect(parseMessage(new TextEncoder().encode("A: 1\n")).body.length).toBe(0);
  });

  test("a line that is not a header field is an error naming the line", () => {
    expect(() => parseMessage(new TextEncoder().encode("A: 1\nnot a header\n\nbody"))).toThrow(/line 2: not a header/);
    expect(() => parseMessage(new TextEncoder().encode(" starts folded\n"))).toThrow(/line 1: a continuation/);
  });

  test("header values lose their leading space unless HDR_LEADSPC was negotiated", () => {
    expect(headerValue(" hello", false)).toBe("hello");
    expect(headerValue(" hello", true)).toBe(" hello");
  });

  test("addresses of From/To values, in angle brackets", () => {
    expect(addresses(' "Doe, John" <j@example.org>, b@example.net (Bob), nobody')).toEqual([
      "<j@example.org>",
      "<b@example.net>",
    ]);
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
    expect(() => parseClientAddr("mx.example", 0)).toThrow(/not an IPv4/);
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
