/**
 * The pure conversions between C values and TypeScript values, without a
 * socket: variant masks, sockaddr decoding, reply validation, wire framing,
 * and the connection-ceiling arithmetic.
 */

import { isIPv6 } from "node:net";
import { describe, expect, test } from "vitest";
import { AF_INET, AF_INET6, AF_UNIX } from "../ffi/constants.ts";
import {
  connectHost,
  decodeSockAddr,
  escapeReplyText,
  formatIPv6,
  macroKey,
  parseSocketSpec,
  replyCodeProblem,
  replyLinesProblem,
  sockaddrLength,
  splitArgv,
} from "../src/convert.ts";
import { connectionFileLimit, relayCeiling, RESERVED_ASYNC_CALLS } from "../src/limits.ts";
import { decodeMask, encodeMask, FLAG_BITS, isStat, STAT_CODES, type Step, STEP_BITS } from "../src/variants.ts";
import {
  decodeModification,
  decodeNegotiation,
  decodeReply,
  encodeFrame,
  splitFrames,
  u32,
} from "../src/testing/protocol.ts";
import { parseSpec } from "../src/testing/client.ts";
import { sockaddrBytes } from "./helpers/bytes.ts";

const sockaddr = (family: number, size: number, fill: (bytes: Uint8Array) => void): Uint8Array =>
  sockaddrBytes(family, fill, size);

describe("variants ↔ C", () => {
  test("stat codes are libmilter's", () => {
    expect(STAT_CODES).toEqual({
      Continue: 0,
      Reject: 1,
      Discard: 2,
      Accept: 3,
      Tempfail: 4,
      No_reply: 7,
      Skip: 8,
      All: 10,
    });
    expect(isStat("Continue")).toBe(true);
    for (const bad of ["continue", "toString", "__proto__", 0, null, undefined]) expect(isStat(bad)).toBe(false);
  });

  test("masks round-trip in OCaml constructor order, unknown bits dropped", () => {
    const steps: Step[] = ["NOCONNECT", "NR_HDR", "SKIP", "MDS_1M"];
    const mask = encodeMask(STEP_BITS, steps);
    expect(mask).toBe(0x1 | 0x80 | 0x400 | 0x20000000);
    expect(decodeMask(STEP_BITS, mask | 0x40000000)).toEqual(steps);
    expect(decodeMask(FLAG_BITS, 0x1ff)).toEqual(Object.keys(FLAG_BITS));
    expect(encodeMask(FLAG_BITS, ["CHGFROM", "ADDHDRS", "ADDHDRS"])).toBe(0x41);
  });
});

describe("sockaddr", () => {
  test("inet: address and port in network order", () => {
    const bytes = sockaddr(AF_INET, sockaddrLength(AF_INET), (b) => b.set([0x12, 0x67, 192, 0, 2, 1], 2));
    expect(decodeSockAddr(bytes)).toEqual({ family: "inet", address: "192.0.2.1", port: 0x1267 });
  });

  test("inet6 and unix", () => {
    const v6 = sockaddr(
      AF_INET6,
      24,
      (b) => b.set([0, 25, 0, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 1], 2),
    );
    expect(decodeSockAddr(v6)).toEqual({ family: "inet6", address: "2001:db8::1", port: 25 });
    const unix = sockaddr(AF_UNIX, 110, (b) => b.set(new TextEncoder().encode("/run/x.sock"), 2));
    expect(decodeSockAddr(unix)).toEqual({ family: "unix", path: "/run/x.sock" });
  });

  test("other families, and too few bytes, give null", () => {
    expect(decodeSockAddr(sockaddr(17, 16, () => {}))).toBeNull();
    expect(decodeSockAddr(sockaddr(AF_INET6, 10, () => {}))).toBeNull();
    expect(decodeSockAddr(new Uint8Array(1))).toBeNull();
  });

  test.each([
    "::",
    "::1",
    "2001:db8::1",
    "2001:db8:0:0:1:0:0:1",
    "fe80::1:2:3:4",
    "1:2:3:4:5:6:7:8",
    "1::",
    "0:0:1::",
    "2001:db8:0:1:1:1:1:1",
    "::ffff:192.0.2.128",
    "1:0:0:2:0:0:0:3",
  ])("formatIPv6 writes %s as URL normalization does", (text) => {
    const bytes = new Uint8Array(16);
    const url = new URL(`http://[${text}]/`).hostname.slice(1, -1); // WHATWG serializer: RFC 5952
    const [head, tail] = url.split("::");
    const words = (
      s: string | undefined,
    ): number[] => (s ? s.split(":").flatMap((w) => w.includes(".") ? [] : [parseInt(w, 16)]) : []);
    const h = words(head), t = tail === undefined ? [] : words(tail);
    const all = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill(0), ...t];
    all.forEach((w, i) => bytes.set([w >> 8, w & 0xff], 2 * i));
    expect(isIPv6(formatIPv6(bytes))).toBe(true);
    if (!text.includes(".")) expect(formatIPv6(bytes)).toBe(url);
  });

  test("v4-mapped addresses keep the dotted quad", () => {
    const bytes = new Uint8Array([...Array(10).fill(0), 0xff, 0xff, 192, 0, 2, 128]);
    expect(formatIPv6(bytes)).toBe("::ffff:192.0.2.128");
  });
});

describe("replies", () => {
  test("codes", () => {
    expect(replyCodeProblem("550", "5.7.1")).toBeNull();
    expect(replyCodeProblem("421", null)).toBeNull();
    expect(replyCodeProblem("250", null)).toMatch(/not a 4xx or 5xx/);
    expect(replyCodeProblem("55", null)).toMatch(/not a 4xx or 5xx/);
    expect(replyCodeProblem("450", "5.1.1")).toMatch(/does not match the class/);
    expect(replyCodeProblem("550", "5.1")).toMatch(/not of the form 5\.x\.y/);
  });

  test("lines", () => {
    expect(replyLinesProblem(["a"])).toBeNull();
    expect(replyLinesProblem([])).toBe("at least one line is required");
    expect(replyLinesProblem(Array(33).fill("x"))).toBe("at most 32 lines are allowed, got 33");
    expect(replyLinesProblem(["ok", "bad\n"])).toBe("line 2 contains CR or LF");
    expect(replyLinesProblem(["é".repeat(491)])).toBe("line 1 is 982 bytes long, more than 980");
    expect(escapeReplyText("100% sure")).toBe("100%% sure");
  });

  test("argv keeps ESMTP arguments in wire order", () => {
    expect(splitArgv(["<a@b>", "SIZE=1", "BODY=8BITMIME"])).toEqual(["<a@b>", ["SIZE=1", "BODY=8BITMIME"]]);
    expect(splitArgv([])).toEqual(["", []]);
  });
});

describe("wire protocol", () => {
  test("frames split across reads and back to back", () => {
    const a = encodeFrame("c"), b = encodeFrame("y", new TextEncoder().encode("550 5.7.1 no\0"));
    const joined = new Uint8Array([...a, ...b]);
    const [first, rest] = splitFrames(joined.subarray(0, 8));
    expect(first).toEqual([{ code: "c", data: new Uint8Array(0) }]);
    const [second, none] = splitFrames(new Uint8Array([...rest, ...joined.subarray(8)]));
    expect(decodeReply(second[0])).toEqual({ action: "replycode", text: "550 5.7.1 no", smtpCode: 550 });
    expect(none).toHaveLength(0);
    expect(() => splitFrames(u32(0))).toThrow("bad frame length 0");
  });

  test("negotiation reply with macro lists", () => {
    const data = new Uint8Array([
      ...u32(6),
      ...u32(0x41),
      ...u32(0x2),
      ...u32(0),
      ...new TextEncoder().encode("{client_addr}\0"),
      ...u32(5),
      ...new TextEncoder().encode("i\0"),
    ]);
    expect(decodeNegotiation(data)).toEqual({
      version: 6,
      actions: ["ADDHDRS", "CHGFROM"],
      steps: ["NOHELO"],
      actionMask: 0x41,
      stepMask: 0x2,
      macros: { CONNECT: "{client_addr}", EOM: "i" },
    });
  });

  test("modifications", () => {
    const frame = (code: string, ...parts: (string | number)[]): { code: string; data: Uint8Array } => ({
      code,
      data: new Uint8Array(
        parts.flatMap((p) => typeof p === "number" ? [...u32(p)] : [...new TextEncoder().encode(`${p}\0`)]),
      ),
    });
    expect(decodeModification(frame("i", 0, "X-Top", "v"))).toEqual({
      type: "insheader",
      index: 0,
      name: "X-Top",
      value: "v",
    });
    expect(decodeModification(frame("m", 2, "Subject", ""))).toEqual({
      type: "chgheader",
      index: 2,
      name: "Subject",
      value: "",
    });
    expect(decodeModification(frame("e", "<a@b>"))).toEqual({ type: "chgfrom", from: "<a@b>", args: null });
    expect(decodeModification(frame("c"))).toBeNull();
  });

  test("socket specs", () => {
    expect(parseSpec("inet:8890@127.0.0.1")).toEqual({ port: 8890, host: "127.0.0.1" });
    expect(parseSpec("inet6:25")).toEqual({ port: 25, host: "::1" });
    expect(parseSpec("local:/run/m.sock")).toEqual({ path: "/run/m.sock" });
    expect(parseSpec("/run/m.sock")).toEqual({ path: "/run/m.sock" });
    expect(() => parseSpec("tcp:25")).toThrow("unknown milter socket spec");
    expect(parseSocketSpec("unix:/a")).toEqual({ kind: "unix", path: "/a" });
    expect(parseSocketSpec("/b")).toEqual({ kind: "unix", path: "/b" });
    expect(parseSocketSpec("inet:1@h")).toEqual({ kind: "inet", port: 1, host: "h" });
    expect(parseSocketSpec("inet6:25")).toEqual({ kind: "inet6", port: 25, host: null });
    expect(parseSocketSpec("tcp:25@h")).toBe("type");
    expect(parseSocketSpec("inet:h@1")).toBe("port");
    expect(connectHost({ kind: "inet", host: "0.0.0.0" })).toBe("127.0.0.1");
    expect(connectHost({ kind: "inet6", host: null })).toBe("::1");
    expect(connectHost({ kind: "inet", host: "192.0.2.1" })).toBe("192.0.2.1");
  });
});

describe("connection ceiling", () => {
  test("stays below koffi's pool, whatever is open", () => {
    expect(connectionFileLimit(relayCeiling(4096), 1_048_576, undefined, 2, () => 1000)).toBe(
      4096 - RESERVED_ASYNC_CALLS,
    );
    expect(connectionFileLimit(relayCeiling(256), 1_048_576, undefined, 2, () => 0)).toBe(256 - RESERVED_ASYNC_CALLS);
    expect(connectionFileLimit(relayCeiling(4096), 1024, undefined, 2, () => 0)).toBe(1024); // the hard limit wins
  });

  test("maxConnections counts only descriptors below the limit", () => {
    // 20 descriptors open below any limit, one far above (fd 251 of a tsx pipe, say).
    const openBelow = (n: number): number => Math.min(n, 20) + (n > 251 ? 1 : 0);
    expect(connectionFileLimit(relayCeiling(4096), 1_048_576, 20, 2, openBelow)).toBe(42);
    expect(connectionFileLimit(relayCeiling(64), 1_048_576, 1000, 2, openBelow)).toBe(64 - RESERVED_ASYNC_CALLS);
  });
});

describe("macroKey", () => {
  test("a one-letter macro is the same with or without braces, a longer one only as written (as smfi_getsymval)", () => {
    expect(macroKey("i")).toBe("i");
    expect(macroKey("{i}")).toBe("i");
    expect(macroKey("{mail_addr}")).toBe("{mail_addr}");
    expect(macroKey("mail_addr")).toBe("mail_addr");
    expect(macroKey("{}")).toBe("{}");
    expect(macroKey("{ab}")).toBe("{ab}");
  });
});
