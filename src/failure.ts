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
import { registered } from "./registration.ts";
import { report } from "./report.ts";
import { writeStderr } from "./runtime.ts";
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
 * Remembers a failure that could not be answered at its own stage (a stage
 * negotiated as no reply, or a pipelined call), to be answered at the next
 * stage that replies ({@linkcode owed}): for the rest of the connection, or
 * of the message. A connection's failure is never narrowed to a message's.
 * With {@linkcode forgetMessage}, the only changes of `Session.failed`.
 */
export function remember(session: Session, scope: "connection" | "message"): void {
  if (session.failed !== "connection") session.failed = scope;
}

/** Ends a message's failure (at abort, or once Tempfail ended the message); a connection's stays. */
function forgetMessage(session: Session): void {
  if (session.failed === "message") session.failed = null;
}

/**
 * What a failure answers. At a stage negotiated as no reply, libmilter would
 * turn Tempfail into silence and then lose track of the message, so the
 * failure is remembered and answered at the next stage that replies: for
 * the rest of the connection after connect or helo, for the rest of the
 * message after any later stage.
 */
export function answerFailure(session: Session, callback: CallbackName, filterName: string): number {
  // A pipelined call is silent whatever its session says: libmilter has moved on.
  if (silent(session, callback) || session.queued !== null) {
    remember(session, STAGES[callback].failure === "connection" ? "connection" : "message");
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
  if (session.failed === null || failure === "ignored") {
    if (callback === "abort") forgetMessage(session);
    return null;
  }
  if (silent(session, callback) || session.queued !== null) return SMFIS_NOREPLY;
  if (failure !== "command") forgetMessage(session); // Tempfail here ends the message
  return tempfail(session.ptr, filterName);
}

/** What a failed callback answers, reported while its Ctx is still usable. */
export function failure(session: Session, callback: CallbackName, error: unknown): number {
  const r = registered();
  const answer = answerFailure(session, callback, r.name);
  const kind = kindOf(error);
  report(error, { callback, ctx: session.ctx, kind });
  return answer;
}

/** Reports a failure of the binding itself, outside any callback's context; never throws. */
export function reportInternal(where: string, error: unknown): void {
  try {
    const why = error instanceof Error ? error.message : describe(error);
    writeStderr(`milter: the binding failed in ${where} and answered Tempfail: ${why}`);
  } catch {
    // stderr is gone
  }
}
