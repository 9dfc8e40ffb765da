/**
 * The module surface in-process: variants, `empty`, ordering rules, and
 * wrong input from plain JS, each a MilterError naming the function.
 */

import { execFile } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, test } from "vitest";
import * as Milter from "../mod.ts";
import type { Event } from "./helpers/filter.ts";
import { command, ROOT } from "./helpers/runtimes.ts";

describe("variants", () => {
  test("are frozen objects of their own names", () => {
    expect(Object.keys(Milter.Stat)).toEqual([
      "Continue",
      "Reject",
      "Discard",
      "Accept",
      "Tempfail",
      "No_reply",
      "Skip",
      "All",
    ]);
    expect(Object.keys(Milter.Flag)).toEqual([
      "ADDHDRS",
      "CHGHDRS",
      "CHGBODY",
      "ADDRCPT",
      "ADDRCPT_PAR",
      "DELRCPT",
      "QUARANTINE",
      "CHGFROM",
      "SETSYMLIST",
    ]);
    expect(Object.keys(Milter.Stage)).toEqual(["CONNECT", "HELO", "ENVFROM", "ENVRCPT", "DATA", "EOM", "EOH"]);
    expect(Object.keys(Milter.Step)).toHaveLength(23);
    for (const v of [Milter.Stat, Milter.Flag, Milter.Stage, Milter.Step]) {
      expect(Object.isFrozen(v)).toBe(true);
      for (const [k, value] of Object.entries(v)) expect(value).toBe(k);
    }
  });

  test("empty and version_code", () => {
    expect(Milter.version_code).toBe(0x01000001);
    expect(Milter.empty).toEqual({ name: "", version: 0x01000001, flags: [] });
    expect(Object.isFrozen(Milter.empty)).toBe(true);
  });

  test("a Ctx cannot be made by hand", () => {
    expect(() => new Milter.Ctx(Symbol("x"), 1)).toThrow(TypeError);
  });
});

describe("ordering and input errors", () => {
  const dir = mkdtempSync(join(tmpdir(), "milter-api-"));
  const conn = `unix:${join(dir, "api.sock")}`;

  test("before anything is set up", async () => {
    expect(() => Milter.stop()).toThrow(new Milter.MilterError("Milter.stop", "main is not running"));
    await expect(Milter.main()).rejects.toThrow("Milter.main: no filter registered; call register first");
    expect(() => Milter.opensocket(true)).toThrow("Milter.opensocket: register a filter first");
    expect(Milter.version()).toEqual([1, 0, 1]);
  });

  test.each([
    [null, "Milter.register: expected a filter object, got null"],
    [{ ...Milter.empty, name: 7 }, "Milter.register: filter.name must be a string, got number 7"],
    [
      { ...Milter.empty, version: 4 },
      "Milter.register: filter.version 4 would make libmilter skip negotiate, data and unknown; use version_code",
    ],
    [
      { ...Milter.empty, version: 0x02000000 },
      "Milter.register: libmilter refused the filter: version 0x2000000 must have the major and minor numbers of the installed libmilter (use version_code)",
    ],
    [
      { ...Milter.empty, flags: ["ADDHDRS", "ADDHEADERS"] },
      'Milter.register: filter.flags contains "ADDHEADERS", not a Flag',
    ],
    [{ ...Milter.empty, eom: "yes" }, 'Milter.register: filter.eom must be a function, null or absent, got "yes"'],
  ])("register(%j) is refused", (filter, message) => {
    expect(() => Milter.register(filter as never)).toThrow(message);
  });

  test.each([
    [
      () => Milter.setconn(""),
      'Milter.setconn: expected a socket spec such as "inet:8890@127.0.0.1" or "unix:/run/milter.sock", got ""',
    ],
    [
      () => Milter.setconn("tcp:25@localhost"),
      'Milter.setconn: unknown socket type in "tcp:25@localhost"; use unix:, local:, inet: or inet6:',
    ],
    [() => Milter.setconn("inet:localhost"), 'Milter.setconn: "inet:localhost" must be inet:port@host'],
    [
      () => Milter.setconn("inet:99999@127.0.0.1"),
      'Milter.setconn: "inet:99999@127.0.0.1" must be inet:port@host with a port from 1 to 65535',
    ],
    [
      () => Milter.setconn("inet6:0@::1"),
      'Milter.setconn: "inet6:0@::1" must be inet6:port@host with a port from 1 to 65535',
    ],
    [() => Milter.setconn("unix:"), 'Milter.setconn: "unix:" has no path; use unix:/path/to/socket'],
    [() => Milter.setconn("local:"), 'Milter.setconn: "local:" has no path; use local:/path/to/socket'],
    [
      () => Milter.settimeout(-1),
      "Milter.settimeout: the timeout must be an integer from 0 to 2147483647, got number -1",
    ],
    [
      () => Milter.setbacklog(0),
      "Milter.setbacklog: the backlog must be an integer from 1 to 2147483647, got number 0",
    ],
    [
      () => Milter.setdbg("6" as never),
      'Milter.setdbg: the debug level must be an integer from 0 to 2147483647, got "6"',
    ],
    [
      () => Milter.setmaxdatasize(1.5),
      "Milter.setmaxdatasize: the size must be an integer from 1 to 2147483647, got number 1.5",
    ],
    [() => Milter.opensocket("yes" as never), 'Milter.opensocket: expected a boolean, got "yes"'],
    [() => Milter.setsocketmode(0o1777), "Milter.setsocketmode: expected a mode from 0 to 0o777, got number 1023"],
    [() => Milter.settcpnodelay("no" as never), 'Milter.settcpnodelay: expected a boolean, got "no"'],
    [() => Milter.setErrorReporter(42 as never), "Milter.setErrorReporter: expected a function or null, got number 42"],
  ])("%s is refused", (call, message) => {
    expect(call).toThrow(message);
    try {
      call();
    } catch (error) {
      expect(error).toBeInstanceOf(Milter.MilterError);
    }
  });

  test("register once, main once, then never again", async () => {
    Milter.register({ ...Milter.empty, name: "api" });
    expect(() => Milter.register({ ...Milter.empty, name: "again" })).toThrow(
      'Milter.register: filter "api" is already registered; libmilter allows one per process',
    );
    await expect(Milter.main()).rejects.toThrow("Milter.main: no socket; call setconn first");
    expect(() => Milter.opensocket(false)).toThrow("Milter.opensocket: call setconn first");
    Milter.setconn(conn);
    Milter.settimeout(30);
    Milter.setbacklog(64);
    expect(Milter.setmaxdatasize(1024 * 1024 - 1)).toBe(65535);
    Milter.setsocketmode(0o600);
    Milter.opensocket(true);
    // The socket is open: another spec would be listened on nowhere, and deleted at exit.
    expect(() => Milter.setconn(`unix:${join(dir, "other.sock")}`)).toThrow(
      `Milter.setconn: the socket ${conn} is already open; call setconn before opensocket`,
    );
    expect(() => Milter.setsocketmode(0o660)).toThrow(
      "Milter.setsocketmode: the socket is already open; call setsocketmode before opensocket",
    );
    expect(() => Milter.settcpnodelay(false)).toThrow(
      "Milter.settcpnodelay: the socket is already open; call settcpnodelay before opensocket",
    );
    const running = Milter.main({ signals: false, drainTimeout: 1 });
    await expect(Milter.main()).rejects.toThrow("Milter.main: already running");
    expect(() => Milter.setconn(conn)).toThrow("Milter.setconn: must be called before main");
    Milter.stop();
    Milter.stop(); // a second stop while stopping does nothing
    await running;
    await expect(Milter.main()).rejects.toThrow(
      "Milter.main: libmilter has already run and stopped; it cannot be restarted in this process",
    );
    expect(() => Milter.stop()).not.toThrow();
  });
});

describe("loading libmilter", () => {
  const run = async (env: Record<string, string>): Promise<Event[]> => {
    const [cmd, args] = command("node", join(ROOT, "test/fixtures/load.ts"));
    const { stdout } = await promisify(execFile)(cmd, args, { cwd: ROOT, env: { ...process.env, ...env } });
    return stdout.trim().split("\n").map((line) => JSON.parse(line));
  };

  test("importing never loads; a missing library is a MilterError that says what to install", async () => {
    const [imported, result] = await run({ LIBMILTER_PATH: "/nonexistent/libmilter.so.1.0.1" });
    expect(imported).toEqual({ event: "imported" });
    expect(result).toMatchObject({ event: "error", name: "MilterError", fn: "Milter.version", isMilterError: true });
    expect(result.message).toMatch(
      /^Milter\.version: cannot load libmilter: LIBMILTER_PATH names a file that does not load\.\nTried:\n {2}\/nonexistent\/libmilter\.so\.1\.0\.1: /,
    );
    for (
      const hint of [
        "apt-get install libmilter1.0.1",
        "dnf install sendmail-milter",
        "apk add libmilter",
        "pkg install libmilter",
      ]
    ) {
      expect(result.message).toContain(hint);
    }
  });

  test("a library that is not libmilter is refused by name", async () => {
    const [, result] = await run({ LIBMILTER_PATH: "libz.so.1" });
    expect(result.message).toContain("libz.so.1: loaded, but is not a usable libmilter");
  });

  test("without LIBMILTER_PATH the system library is found", async () => {
    const [, result] = await run({ LIBMILTER_PATH: "" });
    expect(result).toEqual({ event: "version", version: [1, 0, 1] });
  });
});
