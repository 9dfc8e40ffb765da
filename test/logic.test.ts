/**
 * The callback logic in-process, against a fake native side that records
 * what would reach libmilter: what each stage accepts as an answer
 * (answers.ts), and the failure policy's states (failure.ts) through a
 * message: a failure at a no-reply stage answered at the next stage that
 * replies, a recipient's Tempfail keeping the message's failure, abort
 * forgetting it, a connection's failure lasting. Every stage's facts come
 * from the one table of stages. The same behaviour against real libmilter
 * is in noreply.test.ts and policy.test.ts; these run in milliseconds.
 */

import { beforeAll, describe, expect, test } from "vitest";
import { SMFIS_NOREPLY, SMFIS_TEMPFAIL } from "../ffi/constants.ts";
import koffi from "koffi";
import { SMFI_CURR_ACTS } from "../ffi/constants.ts";
import type { Libmilter } from "../ffi/load.ts";
import { readULong } from "../ffi/memory.ts";
import { BadReturn, statCode } from "../src/answers.ts";
import { enter, leave, type Session } from "../src/ctx.ts";
import { answerFailure, owed } from "../src/failure.ts";
import { useNative } from "../src/native.ts";
import { answerNegotiate } from "../src/negotiation.ts";
import type { Registration } from "../src/registration.ts";
import { CALLBACK_NAMES, type CallbackName, STAGES } from "../src/stages.ts";
import { FLAG_BITS, type Stat, STAT_CODES, STEP_BITS } from "../src/variants.ts";

const STAT_NAMES = Object.keys(STAT_CODES) as Stat[];

/** The replies the fake libmilter was asked to set: [ctx, rcode, xcode, text]. */
const replies: unknown[][] = [];

beforeAll(() => {
  useNative({
    functions: { smfi_setreply: (...args: unknown[]) => replies.push(args) && 0 },
  } as unknown as Libmilter);
});

/** What statCode answers, or "bad" for a BadReturn. */
function code(callback: CallbackName, stat: unknown, noReply = false): number | "bad" {
  try {
    return statCode(callback, stat, noReply);
  } catch (error) {
    if (error instanceof BadReturn) return "bad";
    throw error;
  }
}

describe("answers: what each stage accepts", () => {
  test.each([...CALLBACK_NAMES])("%s", (callback) => {
    for (const stat of STAT_NAMES) {
      const expected = (stat === "All" && callback !== "negotiate") ||
          (stat === "Skip" && callback !== "body") ||
          (stat === "No_reply" && STAGES[callback].failure !== "ignored")
        ? "bad"
        : STAT_CODES[stat];
      expect({ stat, code: code(callback, stat) }).toEqual({ stat, code: expected });
    }
    expect(code(callback, "continue")).toBe("bad");
    expect(code(callback, 0)).toBe("bad");
  });

  test("at a stage negotiated as no reply only Continue and No_reply, both sent as no reply", () => {
    for (const callback of CALLBACK_NAMES.filter((c) => STAGES[c].noReplyStep !== null)) {
      for (const stat of STAT_NAMES) {
        const expected = stat === "Continue" || stat === "No_reply" ? SMFIS_NOREPLY : "bad";
        expect({ callback, stat, code: code(callback, stat, true) }).toEqual({ callback, stat, code: expected });
      }
    }
  });
});

/** A filter without flags or callbacks, for sessions of the failure policy's tests. */
const FILTER: Registration = {
  id: 1,
  self: {},
  name: "logic",
  flags: 0,
  callbacks: {},
  absentSteps: 0,
  negotiatedByShim: false,
};

describe("failure: what is owed after a failure", () => {
  let next = 1n;
  /** A fresh session that negotiated `steps` as no reply. */
  function session(...steps: (keyof typeof STEP_BITS)[]): Session {
    const { session: s } = enter(0x1000n * next++, "negotiate", FILTER);
    s.negotiated(0, steps.reduce((bits, step) => bits | STEP_BITS[step], 0));
    leave(s);
    return s;
  }
  /** Runs `callback`'s owed answer as dispatch does: the code, or "callback" when the filter's callback runs. */
  function at(s: Session, callback: CallbackName): number | "callback" {
    enter(s.ptr, callback, FILTER);
    const answer = owed(s, callback, "logic");
    leave(s);
    return answer ?? "callback";
  }
  /** A failure of `callback`, as dispatch's failure path answers it. */
  function fails(s: Session, callback: CallbackName): number {
    enter(s.ptr, callback, FILTER);
    const answer = answerFailure(s, callback, "logic");
    leave(s);
    return answer;
  }

  test("a header failure under NR_HDR is silent there and answered 451 at end of headers, once", () => {
    const s = session("NR_HDR");
    replies.length = 0;
    expect(fails(s, "header")).toBe(SMFIS_NOREPLY);
    expect(s.owed).toBe("message");
    expect(at(s, "header")).toBe(SMFIS_NOREPLY); // the next headers: silent, the callback not called
    expect(at(s, "eoh")).toBe(SMFIS_TEMPFAIL);
    expect(replies).toEqual([[s.ptr, "451", "4.3.0", "mail filter logic failed; try again later"]]);
    expect(s.owed).toBeNull(); // Tempfail at eoh ends the message
    expect(at(s, "envfrom")).toBe("callback"); // the next message is the filter's again
  });

  test("a recipient's Tempfail does not end the message's failure; abort forgets it", () => {
    const s = session("NR_MAIL");
    expect(fails(s, "envfrom")).toBe(SMFIS_NOREPLY);
    expect(at(s, "envrcpt")).toBe(SMFIS_TEMPFAIL); // failure "command": this recipient only
    expect(s.owed).toBe("message");
    expect(at(s, "envrcpt")).toBe(SMFIS_TEMPFAIL);
    expect(at(s, "abort")).toBe("callback"); // abort runs, and ends the message
    expect(s.owed).toBeNull();
  });

  test("a failure at connect under NR_CONN lasts for the connection; a message's never narrows it", () => {
    const s = session("NR_CONN", "NR_HDR");
    expect(fails(s, "connect")).toBe(SMFIS_NOREPLY);
    expect(s.owed).toBe("connection");
    expect(fails(s, "header")).toBe(SMFIS_NOREPLY);
    expect(s.owed).toBe("connection");
    for (const callback of ["helo", "envfrom", "eom"] as const) expect(at(s, callback)).toBe(SMFIS_TEMPFAIL);
    expect(at(s, "abort")).toBe("callback");
    expect(s.owed).toBe("connection");
  });

  test("a failure where a reply follows answers 451 at once; where the answer is ignored, nothing is set", () => {
    const s = session();
    replies.length = 0;
    expect(fails(s, "envrcpt")).toBe(SMFIS_TEMPFAIL);
    expect(replies).toHaveLength(1);
    expect(fails(s, "close")).toBe(SMFIS_TEMPFAIL);
    expect(replies).toHaveLength(1);
    expect(s.owed).toBeNull();
  });
});

describe("negotiation: what negotiate's answer sets", () => {
  // libmilter's four output words (unsigned long), as answerNegotiate writes them.
  const words = koffi.alloc("unsigned long", 4);
  const base = koffi.address(words) as bigint;
  const size = BigInt(koffi.sizeof("unsigned long"));
  const pf = [0n, 1n, 2n, 3n].map((i) => base + i * size);
  const out = (): number[] => pf.map(readULong);
  const r: Registration = {
    id: 1,
    self: {},
    name: "logic",
    flags: FLAG_BITS.ADDHDRS,
    callbacks: {},
    absentSteps: STEP_BITS.NOHELO | STEP_BITS.NOUNKNOWN,
    negotiatedByShim: false,
  };
  let next = 1n;
  const negotiating = (): Session => enter(0x9000n * next++, "negotiate", r).session;

  test("Continue: the flags and no-reply steps asked, and the NO* steps of absent callbacks the MTA offers", () => {
    const s = negotiating();
    const offered = STEP_BITS.NOHELO | STEP_BITS.NR_HDR; // not NOUNKNOWN
    const code = answerNegotiate(["Continue", ["ADDHDRS", "CHGHDRS"], ["NR_HDR"]], pf, offered, s, r);
    expect(code).toBe(STAT_CODES.Continue);
    expect(out()).toEqual([FLAG_BITS.ADDHDRS | FLAG_BITS.CHGHDRS, STEP_BITS.NR_HDR | STEP_BITS.NOHELO, 0, 0]);
    expect(s.actions).toBe(FLAG_BITS.ADDHDRS | FLAG_BITS.CHGHDRS);
    expect(s.noReply).toBe(STEP_BITS.NR_HDR);
    leave(s);
  });

  test("All: every action, and no stage without a reply, whatever steps come with it", () => {
    const s = negotiating();
    expect(answerNegotiate(["All", [], ["NR_HDR"]], pf, STEP_BITS.NR_HDR, s, r)).toBe(STAT_CODES.All);
    expect(s.actions).toBe(SMFI_CURR_ACTS);
    expect(s.noReply).toBe(0);
    leave(s);
  });

  test.each([
    ["not a triple", "Continue"],
    ["an unknown flag", ["Continue", ["ADDHEADERS"], []]],
    ["an unknown step", ["Continue", [], ["NR_HEADER"]]],
    ["a Stat negotiate may not answer", ["Skip", [], []]],
  ])("%s is a BadReturn, and the session keeps the registration's", (_, answer) => {
    const s = negotiating();
    expect(() => answerNegotiate(answer, pf, 0, s, r)).toThrow(BadReturn);
    expect([s.actions, s.noReply]).toEqual([r.flags, 0]);
    leave(s);
  });
});
