/**
 * What a callback's answer means to libmilter: validation per stage, the
 * reply of a failed callback, and the kinds of failure.
 *
 * @module
 */

import { SMFIS_NOREPLY } from "../ffi/constants.ts";
import { escapeReplyText } from "./convert.ts";
import type { Session } from "./ctx.ts";
import { describe } from "./error.ts";
import { type CallbackName, STAGES } from "./stages.ts";
import { isStat, type Stat, STAT_CODES, STEP_BITS } from "./variants.ts";

/** Thrown inside a trampoline when a callback's answer is not valid. */
export class BadReturn extends Error {
  override name = "BadReturn";
}

/** Raised when a callback's Promise is still pending at `callbackTimeout`, or when libmilter stops. */
export class CallbackTimeout extends Error {
  override name = "CallbackTimeout";
}

/** A callback's answer still to come: its Promise, and how its value becomes libmilter's code. */
export interface Deferred {
  readonly promise: PromiseLike<unknown>;
  readonly settle: (value: unknown) => number;
}

/** Whether `session` negotiated no reply for `callback`'s stage. */
export function silent(session: Session, callback: CallbackName): boolean {
  const step = STAGES[callback].noReplyStep;
  return step !== null && (session.noReply & STEP_BITS[step]) !== 0;
}

/**
 * The C code of a callback's answer, or a {@linkcode BadReturn}: `All` only
 * from negotiate, `Skip` only from body, and at a no-reply stage only
 * `No_reply` or `Continue` (both sent as no reply); `No_reply` elsewhere
 * would leave the MTA waiting.
 */
export function statCode(callback: CallbackName, value: unknown, noReply: boolean): number {
  const bad = (why: string): never => {
    throw new BadReturn(`the ${callback} callback returned ${describe(value)}, ${why}`);
  };
  if (!isStat(value)) bad("not a Stat");
  const stat = value as Stat;
  if (stat === "All" && callback !== "negotiate") bad("not a Stat"); // All is negotiate's alone
  if (noReply) {
    if (stat !== "Continue" && stat !== "No_reply") {
      bad(`but its stage was negotiated as ${STAGES[callback].noReplyStep} (no reply): answer Continue or No_reply`);
    }
    return SMFIS_NOREPLY;
  }
  if (stat === "Skip" && callback !== "body") bad("which only body may answer");
  if (stat === "No_reply" && STAGES[callback].failure !== "ignored") {
    bad(`but the filter did not negotiate ${STAGES[callback].noReplyStep ?? "a no-reply step"} for this stage`);
  }
  return STAT_CODES[stat];
}

/** The reply set when a callback fails: 451 4.3.0, as pymilter does. */
export function failureReply(filterName: string): string {
  return escapeReplyText(`mail filter ${filterName || "(unnamed)"} failed; try again later`);
}

/** What kind of failure `error` is, for any thrown value (a revoked Proxy makes `instanceof` throw). */
export function kindOf(error: unknown): "bad-return" | "exception" | "timeout" {
  try {
    if (error instanceof BadReturn) return "bad-return";
    return error instanceof CallbackTimeout ? "timeout" : "exception";
  } catch {
    return "exception";
  }
}
