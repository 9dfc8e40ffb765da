/**
 * Negotiation: the answer of a negotiate callback, and the negotiation a
 * connection keeps for a next SMTP session after `SMFIC_QUIT_NC`.
 *
 * @module
 */

import { SMFI_CURR_ACTS } from "../ffi/constants.ts";
import { type Pointer, writeULong } from "../ffi/memory.ts";
import { BadReturn, statCode } from "./answers.ts";
import type { Session } from "./ctx.ts";
import { describe } from "./error.ts";
import { reportInternal, tempfail } from "./failure.ts";
import { logging } from "./messages.ts";
import { pipelineStages } from "./pipeline.ts";
import { registered, type Registration, registrationOf } from "./registration.ts";
import { CALLBACK_NAMES, type CallbackName, STAGES } from "./stages.ts";
import { encodeMask, FLAG_BITS, isFlag, isStep, STEP_BITS } from "./variants.ts";

/** The NR_* steps: the stages a connection may promise no reply to. */
const NO_REPLY_MASK = encodeMask(
  STEP_BITS,
  CALLBACK_NAMES.flatMap((name) => STAGES[name].noReplyStep ?? []),
);

/**
 * What the connections whose session just closed had negotiated, by context
 * address. After `SMFIC_QUIT_NC` (end of an SMTP session, the milter
 * connection kept for the next) libmilter calls close, then starts the next
 * session at connect under the same negotiation: that session takes it back
 * from here. A connection that really ended leaves its entry behind (nothing
 * tells the two closes apart), so an entry goes when the next callback at its
 * address comes (a fresh connection there negotiates first), and the oldest
 * go past {@linkcode KEPT_NEGOTIATIONS}.
 */
const closedNegotiations = new Map<
  Pointer,
  { readonly filter: Registration; readonly actions: number; readonly noReply: number }
>();

/**
 * The most entries {@linkcode closedNegotiations} keeps: more than the
 * connections one process serves at once (koffi's relay bounds them near
 * 4,060), so only a connection idle after QUIT_NC while this many others
 * closed loses its entry, and its next session is refused (below).
 */
const KEPT_NEGOTIATIONS = 16_384;
let keptBound = KEPT_NEGOTIATIONS;

/**
 * @internal How many negotiations {@linkcode closedNegotiations} holds now,
 * after setting its bound to `bound` when given: for tests.
 */
export function keptNegotiations(bound?: number): number {
  if (bound !== undefined) keptBound = bound;
  return closedNegotiations.size;
}

/** Keeps a closing session's filter and negotiation for a next session on its connection (after SMFIC_QUIT_NC). */
export function keepNegotiated(session: Session): void {
  closedNegotiations.delete(session.ptr); // re-inserted last: the Map's order is the age
  closedNegotiations.set(session.ptr, { filter: session.filter, actions: session.actions, noReply: session.noReply });
  if (closedNegotiations.size > keptBound) {
    closedNegotiations.delete(closedNegotiations.keys().next().value!);
  }
}

/**
 * The filter a session opening with `callback` at `ptr` runs: its
 * connection's `generation` when the shim gave one; otherwise, for a next
 * session after SMFIC_QUIT_NC, the filter of the session before it; for a
 * fresh connection, the current one.
 */
export function startingFilter(ptr: Pointer, callback: CallbackName, generation: number): Registration {
  if (generation !== 0) return registrationOf(generation);
  const before = callback === "negotiate" ? undefined : closedNegotiations.get(ptr);
  return before?.filter ?? registered();
}

/**
 * Opens a session: negotiate starts a fresh connection; any other first
 * callback starts a next session after SMFIC_QUIT_NC, which takes its
 * connection's negotiation back. Returns `false` when that negotiation is
 * lost (see {@linkcode KEPT_NEGOTIATIONS}): what the MTA expects no reply to
 * is then unknown, and the session is refused.
 */
export function resumeNegotiated(session: Session, callback: CallbackName, r: Registration): boolean {
  const negotiated = closedNegotiations.get(session.ptr);
  closedNegotiations.delete(session.ptr);
  if (callback === "negotiate" || r.callbacks.negotiate === undefined) return true;
  if (negotiated === undefined) return STAGES[callback].failure === "ignored";
  session.negotiated(negotiated.actions, negotiated.noReply);
  pipelineStages(session, r);
  return true;
}

/** Refuses a session whose connection's negotiation was dropped (see resumeNegotiated): 451 4.3.0, and says why. */
export function refuseUnnegotiated(session: Session, callback: CallbackName, r: Registration): number {
  reportInternal(
    `${callback} of ${session.ctx}`,
    new Error(
      `a session after SMFIC_QUIT_NC whose connection's negotiation is no longer kept (over ${keptBound} ` +
        "connections closed meanwhile); refused",
    ),
  );
  return tempfail(session.ptr, r.name);
}

/**
 * The NO* steps that keep the MTA from sending what the log needs
 * (`main({ log })`): connect and MAIL, whose macros (the client's address,
 * the sender) the MTA sends only with them, and RCPT, which it counts.
 */
const OBSERVED_STEPS = encodeMask(STEP_BITS, ["NOCONNECT", "NOMAIL", "NORCPT"]);

/**
 * The NO* steps asked for `r`'s absent callbacks (where the MTA offers
 * them): all of them, but while messages are logged, not those of
 * connect, MAIL and RCPT, which the log reads.
 */
export function absentSteps(r: Registration): number {
  return logging() ? r.absentSteps & ~OBSERVED_STEPS : r.absentSteps;
}

/** Validates negotiate's answer and writes it to libmilter's output words. */
export function answerNegotiate(
  result: unknown,
  pf: readonly Pointer[],
  offeredSteps: number,
  session: Session,
  r: Registration,
): number {
  if (!Array.isArray(result) || result.length !== 3) {
    throw new BadReturn(`the negotiate callback returned ${describe(result)}, not [Stat, Flag[], Step[]]`);
  }
  const [stat, flags, steps] = result as unknown[];
  const code = statCode("negotiate", stat, false);
  if (!Array.isArray(flags) || !flags.every(isFlag)) {
    throw new BadReturn(`the negotiate callback's flags are ${describe(flags)}, not Flag[]`);
  }
  if (!Array.isArray(steps) || !steps.every(isStep)) {
    throw new BadReturn(`the negotiate callback's steps are ${describe(steps)}, not Step[]`);
  }
  const stepMask = encodeMask(STEP_BITS, steps);
  // With All, libmilter ignores the returned steps: no stage is no-reply.
  session.negotiated(
    stat === "All" ? SMFI_CURR_ACTS : encodeMask(FLAG_BITS, flags),
    stat === "All" ? 0 : stepMask & NO_REPLY_MASK,
  );
  pipelineStages(session, r);
  writeULong(pf[0], encodeMask(FLAG_BITS, flags));
  // The NO* steps of absent callbacks only where the MTA offers them, as libmilter does without a
  // negotiate callback: libmilter drops a connection asked for a step its MTA lacks.
  writeULong(pf[1], (stepMask | (absentSteps(r) & offeredSteps)) >>> 0);
  writeULong(pf[2], 0);
  writeULong(pf[3], 0);
  return code;
}
