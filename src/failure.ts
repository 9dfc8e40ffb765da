/**
 * The failure policy: what a failed callback answers, at its own stage or,
 * after a no-reply stage, at the next stage that replies; never an accept.
 *
 * @module
 */

import { SMFIS_NOREPLY, SMFIS_TEMPFAIL } from "../ffi/constants.ts";
import type { Pointer } from "../ffi/memory.ts";
import { failureReply, kindOf, silent } from "./answers.ts";
import type { Session } from "./ctx.ts";
import { describe } from "./error.ts";
import { native } from "./native.ts";
import { report } from "./report.ts";
import { writeStderr } from "./runtime.ts";
import { countEvent } from "./stats.ts";
import { type CallbackName, STAGES } from "./stages.ts";

/** Answers Tempfail with the 451 4.3.0 reply of a failed callback. */
export function tempfail(ptr: Pointer, filterName: string): number {
  try {
    native("setreply").functions.smfi_setreply(ptr, "451", "4.3.0", failureReply(filterName));
  } catch {
    // the Tempfail still goes out, with the MTA's default text
  }
  return SMFIS_TEMPFAIL;
}

/**
 * Whether no reply goes from this call of `callback` to the MTA: its stage
 * was negotiated as no reply, or the call is pipelined (libmilter has moved
 * on, whatever its session says).
 */
function replyless(session: Session, callback: CallbackName): boolean {
  return silent(session, callback) || session.queued !== null;
}

/**
 * What a failure answers. At a stage negotiated as no reply, libmilter would
 * turn Tempfail into silence and then lose track of the message, so the
 * failure is remembered and answered at the next stage that replies: for
 * the rest of the connection after connect or helo, for the rest of the
 * message after any later stage.
 */
export function answerFailure(session: Session, callback: CallbackName, filterName: string): number {
  if (replyless(session, callback)) {
    session.owe(STAGES[callback].failure === "connection" ? "connection" : "message");
    return SMFIS_NOREPLY;
  }
  return STAGES[callback].failure === "ignored" ? SMFIS_TEMPFAIL : tempfail(session.ptr, filterName);
}

/**
 * The answer owed for a failure remembered at an earlier no-reply stage, or
 * `null` when there is none: Tempfail 451 4.3.0 at each stage that replies,
 * silence at no-reply stages. The filter's callbacks are not called
 * meanwhile, except abort and close, which end the message or the
 * connection. A message's failure ends with the message: at abort, or once
 * Tempfail was answered at a stage where it ends the message.
 */
export function owed(session: Session, callback: CallbackName, filterName: string): number | null {
  const { failure } = STAGES[callback];
  if (session.owed === null || failure === "ignored") {
    if (callback === "abort") session.forgetMessage();
    return null;
  }
  if (replyless(session, callback)) return SMFIS_NOREPLY;
  if (failure !== "command") session.forgetMessage(); // Tempfail here ends the message
  return tempfail(session.ptr, filterName);
}

/** What a failed callback answers, reported while its Ctx is still usable. */
export function failure(session: Session, callback: CallbackName, error: unknown): number {
  const answer = answerFailure(session, callback, session.filter.name);
  const kind = kindOf(error);
  report(error, { callback, ctx: session.ctx, kind, filter: session.filter.name });
  return answer;
}

/** Reports a failure of the binding itself, outside any callback's context; never throws. */
export function reportInternal(where: string, error: unknown): void {
  countEvent("internal");
  try {
    const why = error instanceof Error ? error.message : describe(error);
    writeStderr(`milter: the binding failed in ${where} and answered Tempfail: ${why}`);
  } catch {
    // stderr is gone
  }
}
