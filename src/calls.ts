/**
 * One call of a filter callback, from libmilter's side: opening the
 * connection's session, the answer owed for an earlier failure, the
 * callback, its failure, an answer that comes later (a Promise), and the
 * end of the call.
 *
 * @module
 */

import { SMFIS_TEMPFAIL } from "../ffi/constants.ts";
import type { Pointer } from "../ffi/memory.ts";
import type { QueuedCall } from "../ffi/shim.ts";
import { BadReturn, CallbackTimeout, type Deferred, kindOf } from "./answers.ts";
import { enter, type Invocation, leave, release, runInvocation, type Session, sessionAt } from "./ctx.ts";
import { failure, owed } from "./failure.ts";
import { lifecycle } from "./lifecycle.ts";
import { native } from "./native.ts";
import { keepNegotiated, refuseUnnegotiated, resumeNegotiated, startingFilter } from "./negotiation.ts";
import { queueDone } from "./pipeline.ts";
import type { Registration } from "./registration.ts";
import { noteAnswer } from "./messages.ts";
import type { CallbackName } from "./stages.ts";
import { countCall, countEvent, countPending, type FailureKind } from "./stats.ts";

/** Calls into JS so far: those libmilter's thread waited for (round trips), and those queued. */
const calls = { roundTrips: 0, queued: 0 };

/**
 * @internal How many calls came into JS so far: `roundTrips`, which held
 * libmilter's thread until JS answered, and `queued`, which the shim answered
 * at once (pipelined): for tests and the benchmark.
 */
export function callsIntoJs(): { readonly roundTrips: number; readonly queued: number } {
  return { ...calls };
}

/** The generation the shim gave the call being dispatched (its connection's filter), 0 when none. */
let arriving = 0;

/** Runs `run` (a trampoline) for a call the shim gave with its connection's `generation`. */
export function arrivingWith<T>(generation: number, run: () => T): T {
  arriving = generation;
  try {
    return run();
  } finally {
    arriving = 0;
  }
}

/**
 * Runs one callback for the connection at `ptr`: opens the session, calls
 * `body`, and turns anything that escapes into the failure policy. A body
 * that answers with a Promise keeps the session in its callback until the
 * Promise settles (or `callbackTimeout` passes), and libmilter's thread
 * parked in the shim until then: see {@linkcode answerLater}.
 */
export function dispatch(
  callback: CallbackName,
  ptr: Pointer,
  token: number,
  body: (session: Session, r: Registration) => number | Deferred,
  queued: QueuedCall | null = null,
): number {
  const started = performance.now();
  if (queued === null) calls.roundTrips++;
  else calls.queued++;
  const open = sessionAt(ptr);
  const opening = open === undefined;
  const r = open?.filter ?? startingFilter(ptr, callback, arriving);
  const invocation = enter(ptr, callback, r, token, queued);
  const { session } = invocation;
  // A connection JS negotiates gets its filter's generation from JS: the shim's wrappers then follow it.
  if (opening && callback === "negotiate") native("negotiate").relay.stamp(ptr, r.id);
  if (opening) countEvent("session");
  const resumed = !opening || resumeNegotiated(session, callback, r);
  let answer: number;
  let failed: FailureKind | null = null;
  let own = false; // the answer is the filter's callback's
  try {
    // A connection that starts while main is stopping is refused at its
    // first callback (negotiate or connect; the shim refuses it where it
    // answers negotiate), so the MTA tempfails it; so is a session whose
    // connection's negotiation was lost.
    if (opening && !r.negotiatedByShim && lifecycle.phase !== "running" && callback !== "close") {
      countEvent("refused");
      answer = SMFIS_TEMPFAIL;
    } else if (!resumed) answer = refuseUnnegotiated(session, callback, r);
    else {
      const owes = owed(session, callback, r.name);
      own = owes === null && r.callbacks[callback] !== undefined;
      const result = owes ?? runInvocation(session, () => body(session, r));
      if (typeof result !== "number") return answerLater(invocation, result, started);
      answer = result;
    }
  } catch (error) {
    answer = failure(session, callback, error);
    failed = kindOf(error);
  }
  recordAnswer(session, callback, answer, started, own, failed);
  end(session, callback);
  return answer;
}

/**
 * Counts a call answered `code` (`own`: by the filter's callback; `failed`:
 * by the binding for it) and notes it for the log, while its Ctx is usable.
 */
function recordAnswer(
  session: Session,
  callback: CallbackName,
  code: number,
  started: number,
  own: boolean,
  failed: FailureKind | null,
): void {
  const seconds = (performance.now() - started) / 1000;
  const quarantined = session.takeQuarantined();
  if (own || failed !== null) countCall(callback, seconds, failed === null ? code : null, quarantined !== null);
  if (callback === "eom" || callback === "abort") countEvent(callback);
  noteAnswer(session, callback, code, seconds, failed, quarantined);
}

/** Ends a callback: its Ctx is unusable until the next one, and for good after close. */
function end(session: Session, callback: CallbackName): void {
  leave(session);
  if (callback !== "close") return;
  keepNegotiated(session);
  release(session);
}

/**
 * Answers a callback whose value is a Promise: libmilter's thread waits in
 * the shim (the handler returns its pending code) until the Promise settles
 * or `callbackTimeout` passes, whichever comes first; then the answer is
 * computed while the Ctx is still usable, and given to the shim. What comes
 * after that changes nothing. Without the shim a Promise cannot be waited
 * for: the callback fails, naming the platform. A pipelined call (`queued`)
 * has no thread waiting: its settlement lets the connection's next queued
 * call run instead.
 */
function answerLater(invocation: Invocation, deferred: Deferred, started: number): number {
  const { session, callback, token, queued } = invocation;
  const relay = native("main").relay;
  const why = queued === null ? relay.cannotWait(token) : null;
  if (why !== null) {
    deferred.promise.then(undefined, () => {}); // abandoned: its rejection must not go unhandled
    const code = failure(
      session,
      callback,
      new BadReturn(`the ${callback} callback returned a Promise, which needs the native shim: ${why}`),
    );
    recordAnswer(session, callback, code, started, false, "bad-return");
    end(session, callback);
    return code;
  }
  let settled = false;
  const answer = (compute: () => number): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    invocation.abandon = null;
    countPending(-1);
    let code: number;
    let failed: FailureKind | null = null;
    try {
      code = compute();
    } catch (error) {
      code = failure(session, callback, error);
      failed = kindOf(error);
    }
    recordAnswer(session, callback, code, started, failed === null, failed);
    end(session, callback);
    if (queued === null) relay.reply(token, code);
    else queueDone(queued);
  };
  countPending(1);
  const timeoutMs = lifecycle.callbackTimeoutMs;
  const timer = timeoutMs === null ? undefined : setTimeout(() =>
    answer(() => {
      throw new CallbackTimeout(
        `the ${callback} callback's Promise did not settle within callbackTimeout (${timeoutMs / 1000} s)`,
      );
    }), timeoutMs);
  invocation.abandon = () =>
    answer(() => {
      throw new CallbackTimeout(`the ${callback} callback's Promise was still pending when libmilter stopped`);
    });
  // Adopted into a native Promise: a thenable's then() then runs in a later
  // microtask, so it can neither answer while this callback is still on the
  // stack nor throw into it (a throw becomes a rejection).
  new Promise((resolve) => resolve(deferred.promise)).then(
    (value) => answer(() => deferred.settle(value)),
    (error) =>
      answer(() => {
        throw error;
      }),
  );
  return relay.pendingCode;
}

/**
 * Answers every callback still waiting for its Promise with Tempfail: when
 * libmilter stops, no Promise may keep one of its threads parked.
 */
export function abandonPending(sessions: Iterable<Session>): void {
  for (const session of [...sessions]) session.invocation?.abandon?.();
}
