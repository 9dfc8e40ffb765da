/**
 * Property-based tests (fast-check) of every C ↔ TS conversion: what goes
 * one way comes back the same, and validators accept exactly what libmilter
 * accepts.
 */

import fc from "fast-check";
import { isIPv4, isIPv6 } from "node:net";
import { describe, expect, test } from "vitest";
import { AF_INET, AF_INET6, AF_UNIX } from "../ffi/constants.ts";
import {
  decodeSockAddr,
  escapeReplyText,
  formatIPv6,
  replyCodeProblem,
  replyLinesProblem,
  splitArgv,
} from "../src/convert.ts";
import { connectionFileLimit, relayCeiling, RESERVED_ASYNC_CALLS } from "../src/limits.ts";
import { decodeMask, encodeMask, type Flag, FLAG_BITS, type Step, STEP_BITS } from "../src/variants.ts";
import { cstrings, encodeFrame, splitCStrings, splitFrames } from "../src/testing/protocol.ts";
import { sockaddrBytes } from "./helpers/bytes.ts";

const sortedBy = <K extends string>(table: Record<K, number>, names: K[]): K[] => {
  const order = Object.keys(table);
  return [...new Set(names)].sort((a, b) => order.indexOf(a) - order.indexOf(b));
};

/** Parses IPv6 text back to 16 bytes (with an embedded dotted quad). */
function parseIPv6(text: string): number[] {
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const words = (s: string): number[] =>
    s === "" ? [] : s.split(":").flatMap((w) =>
      w.includes(".")
        ? (() => {
          const [a, b, c, d] = w.split(".").map(Number);
          return [(a << 8) | b, (c << 8) | d];
        })()
        : [parseInt(w, 16)]
    );
  const h = words(head), t = tail === undefined ? [] : words(tail);
  const all = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill(0), ...t];
  return all.flatMap((w) => [w >> 8, w & 0xff]);
}

describe("variants", () => {
  test("flag and step masks round-trip, in OCaml constructor order", () => {
    const flags = Object.keys(FLAG_BITS) as Flag[], steps = Object.keys(STEP_BITS) as Step[];
    fc.assert(fc.property(fc.array(fc.constantFrom(...flags)), (names) => {
      expect(decodeMask(FLAG_BITS, encodeMask(FLAG_BITS, names))).toEqual(sortedBy(FLAG_BITS, names));
    }));
    fc.assert(fc.property(fc.array(fc.constantFrom(...steps)), (names) => {
      expect(decodeMask(STEP_BITS, encodeMask(STEP_BITS, names))).toEqual(sortedBy(STEP_BITS, names));
    }));
  });

  test("decoding any 32-bit mask keeps exactly the known bits", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 0xffffffff }), (mask) => {
      const known = Object.values(STEP_BITS).reduce((a, b) => a | b, 0);
      expect(encodeMask(STEP_BITS, decodeMask(STEP_BITS, mask))).toBe((mask & known) >>> 0);
    }));
  });
});

describe("sockaddr", () => {
  const sockaddr = sockaddrBytes;

  test("inet: any address and port", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 4 }), fc.integer({ min: 0, max: 65535 }), (ip, port) => {
        const decoded = decodeSockAddr(sockaddr(AF_INET, (b) => b.set([port >> 8, port & 0xff, ...ip], 2)));
        expect(decoded).toEqual({ family: "inet", address: Array.from(ip).join("."), port });
        expect(isIPv4((decoded as { address: string }).address)).toBe(true);
      }),
    );
  });

  test("inet6: any address formats to valid, canonical text that parses back", () => {
    const words = fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), {
      minLength: 8,
      maxLength: 8,
    });
    fc.assert(fc.property(words, fc.integer({ min: 0, max: 65535 }), (ws, port) => {
      const ip = ws.flatMap((w) => [w >> 8, w & 0xff]);
      const decoded = decodeSockAddr(sockaddr(AF_INET6, (b) => b.set([port >> 8, port & 0xff, 0, 0, 0, 0, ...ip], 2)));
      const { address } = decoded as { address: string };
      expect(decoded).toMatchObject({ family: "inet6", port });
      expect(isIPv6(address)).toBe(true);
      expect(parseIPv6(address)).toEqual(ip);
      if (!address.includes(".")) expect(address).toBe(new URL(`http://[${address}]/`).hostname.slice(1, -1));
    }));
  });

  test("unix: any path up to 107 bytes", () => {
    const path = fc.stringMatching(/^\/[a-zA-Z0-9._\/-]{0,100}$/);
    fc.assert(fc.property(path, (p) => {
      const decoded = decodeSockAddr(sockaddr(AF_UNIX, (b) => b.set(new TextEncoder().encode(p), 2)));
      expect(decoded).toEqual({ family: "unix", path: p });
    }));
  });

  test("any other family, or too few bytes, is null and never throws", () => {
    // The three families' names and the bytes each needs: family, port and address (sun_path[108] for unix).
    const known = new Map<number, [string, number]>([
      [AF_INET, ["inet", 8]],
      [AF_INET6, ["inet6", 24]],
      [AF_UNIX, ["unix", 110]],
    ]);
    const family = fc.oneof(fc.constantFrom(...known.keys()), fc.integer({ min: 0, max: 0xffff }));
    const cut = fc.integer({ min: 0, max: 130 });
    fc.assert(fc.property(family, fc.uint8Array({ maxLength: 128 }), cut, (f, rest, length) => {
      const whole = Uint8Array.of(...sockaddr(f, () => {}, 2), ...rest);
      const bytes = whole.subarray(0, Math.min(length, whole.length));
      const result = decodeSockAddr(bytes);
      const entry = known.get(f);
      if (entry === undefined || bytes.length < entry[1]) expect(result).toBeNull();
      else expect(result?.family).toBe(entry[0]);
    }));
  });

  test("formatIPv6 of any 16 bytes parses back", () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
      expect(parseIPv6(formatIPv6(bytes))).toEqual(Array.from(bytes));
    }));
  });
});

describe("replies", () => {
  test("escaping % round-trips and leaves no single %", () => {
    fc.assert(fc.property(fc.string(), (text) => {
      const escaped = escapeReplyText(text);
      expect(escaped.replaceAll("%%", "%")).toBe(text);
      expect(escaped.replaceAll("%%", "")).not.toContain("%");
    }));
  });

  test("reply codes: exactly 4xx/5xx with an optional x.y.z of the same class", () => {
    const code = fc.tuple(fc.constantFrom("4", "5"), fc.integer({ min: 0, max: 99 })).map(([c, n]) =>
      `${c}${String(n).padStart(2, "0")}`
    );
    fc.assert(fc.property(code, fc.integer({ min: 0, max: 999 }), fc.integer({ min: 0, max: 999 }), (rcode, y, z) => {
      expect(replyCodeProblem(rcode, null)).toBeNull();
      expect(replyCodeProblem(rcode, `${rcode[0]}.${y}.${z}`)).toBeNull();
      expect(replyCodeProblem(rcode, `${rcode[0] === "4" ? "5" : "4"}.${y}.${z}`)).not.toBeNull();
    }));
    fc.assert(fc.property(fc.string(), (rcode) => {
      expect(replyCodeProblem(rcode, null) === null).toBe(/^[45]\d\d$/.test(rcode));
    }));
  });

  test("reply lines: 1 to 32, each ≤ 980 bytes without CR or LF", () => {
    const line = fc.string({ maxLength: 200 }).filter((s) => !/[\r\n]/.test(s));
    fc.assert(fc.property(fc.array(line, { minLength: 1, maxLength: 32 }), (lines) => {
      expect(replyLinesProblem(lines)).toBeNull();
    }));
    fc.assert(
      fc.property(
        fc.array(line, { minLength: 1, maxLength: 32 }),
        fc.nat(),
        fc.constantFrom("\r", "\n"),
        (lines, at, bad) => {
          const i = at % lines.length;
          const broken = lines.map((l, j) => (j === i ? `${l}${bad}` : l));
          expect(replyLinesProblem(broken)).toBe(`line ${i + 1} contains CR or LF`);
        },
      ),
    );
    fc.assert(fc.property(fc.array(line, { minLength: 33, maxLength: 40 }), (lines) => {
      expect(replyLinesProblem(lines)).toBe(`at most 32 lines are allowed, got ${lines.length}`);
    }));
  });
});

describe("wire protocol", () => {
  test("frames survive any split of the byte stream", () => {
    const frame = fc.record({
      code: fc.constantFrom("c", "y", "h", "b", "O"),
      data: fc.uint8Array({ maxLength: 300 }),
    });
    fc.assert(fc.property(fc.array(frame, { maxLength: 10 }), fc.array(fc.nat(), { maxLength: 10 }), (frames, cuts) => {
      const stream = new Uint8Array(frames.flatMap((f) => [...encodeFrame(f.code, f.data)]));
      const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
      let rest = new Uint8Array(0);
      const got: { code: string; data: Uint8Array }[] = [];
      let from = 0;
      for (const to of [...points, stream.length]) {
        const [found, left] = splitFrames(new Uint8Array([...rest, ...stream.subarray(from, to)]));
        got.push(...found);
        rest = new Uint8Array(left);
        from = to;
      }
      expect(rest).toHaveLength(0);
      expect(got).toEqual(frames);
    }));
  });

  test("NUL-terminated strings round-trip", () => {
    const text = fc.string().filter((s) => !s.includes("\0"));
    fc.assert(fc.property(fc.array(text, { maxLength: 8 }), (values) => {
      const split = splitCStrings(cstrings(...values));
      expect(split).toEqual(values.map((v) => new TextDecoder().decode(new TextEncoder().encode(v))));
    }));
  });

  test("argv keeps every argument, in order", () => {
    fc.assert(fc.property(fc.array(fc.string(), { minLength: 1 }), (argv) => {
      const [address, args] = splitArgv(argv);
      expect([address, ...args]).toEqual(argv);
    }));
  });
});

test("the connection ceiling never exceeds koffi's pool or the hard limit", () => {
  fc.assert(fc.property(
    fc.integer({ min: 16, max: 4096 }),
    fc.integer({ min: 16, max: 1 << 20 }),
    fc.option(fc.integer({ min: 1, max: 10_000 }), { nil: undefined }),
    fc.integer({ min: 0, max: 500 }),
    (pool, hard, max, open) => {
      const limit = connectionFileLimit(relayCeiling(pool), hard, max, 2, (n) => Math.min(n, open));
      expect(limit).toBeLessThanOrEqual(Math.max(pool - RESERVED_ASYNC_CALLS, 16));
      expect(limit).toBeLessThanOrEqual(hard);
      if (max !== undefined && open + 2 + max < Math.min(pool - RESERVED_ASYNC_CALLS, hard)) {
        expect(limit).toBe(open + 2 + max);
      }
    },
  ));
});
