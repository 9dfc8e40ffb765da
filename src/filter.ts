/**
 * The filter description, its registration with libmilter, and the C
 * trampolines that call the filter's callbacks.
 *
 * Every trampoline is total: whatever the JS callback does, libmilter gets a
 * valid answer. A callback that throws or returns something that is not a
 * valid answer is reported and answered `Tempfail` with the reply
 * `451 4.3.0`, never koffi's default of 0 (= SMFIS_CONTINUE, which would let
 * the mail through unfiltered).
 *
 * @module
 */

import {
  MI_SUCCESS,
  SMFI_CURR_ACTS,
  SMFI_VERSION,
  SMFIP_SKIP,
  SMFIS_CONTINUE,
  SMFIS_NOREPLY,
  SMFIS_TEMPFAIL,
} from "../ffi/constants.ts";
import {
  type Pointer,
  readBytes,
  readCString,
  readPointers,
  readULong,
  readUShort,
  writeULong,
} from "../ffi/memory.ts";
import type { Later } from "../ffi/load.ts";
import { PIPELINED_SYMBOLS, type PipelinedSymbol, type PipelineStats, type QueuedCall } from "../ffi/shim.ts";
import {
  CALLBACK_SYMBOLS,
  type CallbackHandler,
  type CallbackHandlers,
  type CallbackSymbol,
  type SmfiDesc,
} from "../ffi/symbols.ts";
import { decodeSockAddr, escapeReplyText, macroKey, type SockAddr, sockaddrLength, splitArgv } from "./convert.ts";
import { type Ctx, enter, isOpen, leave, release, runInvocation, type Session, sessionAt } from "./ctx.ts";
import { describe, fail, isThenable, milterError } from "./error.ts";
import { lifecycle } from "./lifecycle.ts";
import { native } from "./native.ts";
import { report, reportFor } from "./report.ts";
import { CALLBACK_NAMES, type CallbackName, stageOf, STAGES } from "./stages.ts";
import { writeStderr } from "./runtime.ts";
import {
  decodeMask,
  encodeMask,
  type Flag,
  FLAG_BITS,
  isFlag,
  isStat,
  isStep,
  type Stat,
  STAT_CODES,
  type Step,
  STEP_BITS,
} from "./variants.ts";

/**
 * The libmilter version this binding is written against (`SMFI_VERSION`,
 * 0x01000001). A filter's `version` must be this value.
 */
export const version_code: number = SMFI_VERSION;

/**
 * What a callback answers: the value itself, or a Promise of it. While the
 * Promise is pending, the callback's connection waits (and only it), and its
 * Ctx stays usable, up to `main({ callbackTimeout })`.
 */
export type Answer<T> = T | PromiseLike<T>;

/**
 * A mail filter: its name, version, the actions it may take, and the
 * callbacks for the stages it wants to see. A callback left out (or `null`)
 * is registered with libmilter as NULL, so the MTA does not even send that
 * stage. Every callback runs on the JS thread while libmilter's thread for
 * the connection waits for its answer: returned at once, or as a Promise
 * (`async` callbacks), which holds only its own connection until it settles.
 *
 * At a header, eoh or body stage that a connection negotiated as no reply
 * (`NR_HDR`, `NR_EOH`, `NR_BODY`), the callback is pipelined: libmilter is
 * answered at once and the callback runs soon after, in order with the
 * connection's other callbacks; the next stage that replies waits for it
 * (see `MainOptions.pipelineBytes`).
 *
 * The filter may be a plain object or an instance of a class: each callback
 * is read once by {@linkcode register} with ordinary property access (own,
 * inherited or non-enumerable alike) and called with the filter as `this`.
 * Changing the object after registration changes nothing.
 */
export interface Filter {
  /** The name of the filter, used in libmilter's logs and in the 451 reply of a failed callback. */
  name: string;
  /** The libmilter version. Must be set to {@linkcode version_code}. */
  version: number;
  /** The actions the filter performs at end of message; each must be listed here (or requested from `negotiate`). */
  flags: Flag[];
  /**
   * Called at the start of each SMTP connection, with the client's host name
   * (`null` if the MTA gave none) and address (`null` if the family is not
   * inet, inet6 or unix, or the MTA sent no address).
   */
  connect?: ((ctx: Ctx, host: string | null, addr: SockAddr | null) => Answer<Stat>) | null;
  /** Called for each HELO/EHLO (zero or more times per connection), with its argument. */
  helo?: ((ctx: Ctx, helo: string) => Answer<Stat>) | null;
  /** Called for MAIL FROM, with the sender address (with its `<>`) and the ESMTP arguments in wire order. */
  envfrom?: ((ctx: Ctx, sender: string, args: string[]) => Answer<Stat>) | null;
  /** Called for each RCPT TO, with the recipient address (with its `<>`) and the ESMTP arguments in wire order. */
  envrcpt?: ((ctx: Ctx, rcpt: string, args: string[]) => Answer<Stat>) | null;
  /** Called for each message header, with its name and value. */
  header?: ((ctx: Ctx, name: string, value: string) => Answer<Stat>) | null;
  /** Called once after the last header. */
  eoh?: ((ctx: Ctx) => Answer<Stat>) | null;
  /** Called for each piece of the body (a copy, still valid after the callback returns) and its length. */
  body?: ((ctx: Ctx, chunk: Uint8Array, length: number) => Answer<Stat>) | null;
  /** Called once at end of message; the only place message modifications are allowed. */
  eom?: ((ctx: Ctx) => Answer<Stat>) | null;
  /**
   * Called when the current message is aborted; must reclaim per-message
   * resources. `abort` and `eom` exclude each other. Its answer is ignored.
   */
  abort?: ((ctx: Ctx) => Answer<Stat>) | null;
  /**
   * Called when the connection closes, even after an abort, and possibly as
   * the only callback of a connection. Its answer is ignored. The private
   * data is released after it returns, whether or not the filter clears it.
   */
  close?: ((ctx: Ctx) => Answer<Stat>) | null;
  /** Called for an SMTP command the MTA does not know or implement, with the command. */
  unknown?: ((ctx: Ctx, command: string) => Answer<Stat>) | null;
  /** Called for the DATA command. */
  data?: ((ctx: Ctx) => Answer<Stat>) | null;
  /**
   * Called once at connection start with the actions and steps the MTA
   * offers; returns a `Stat` (`Continue` to use the returned lists, `All` to
   * take everything offered, anything else to refuse the connection) and the
   * actions and steps the filter requires. The `NO*` steps of the callbacks
   * the filter leaves out are always added, as libmilter does without a
   * negotiate callback.
   */
  negotiate?: ((ctx: Ctx, flags: Flag[], steps: Step[]) => Answer<[Stat, Flag[], Step[]]>) | null;
}

/**
 * A filter with name `""`, version {@linkcode version_code}, no flags and no
 * callbacks; spread it and set what you need.
 */
export const empty: Readonly<Filter> = Object.freeze({
  name: "",
  version: version_code,
  flags: Object.freeze([]) as unknown as Flag[],
});

/** The NR_* steps: the stages a connection may promise no reply to. */
const NO_REPLY_MASK = encodeMask(
  STEP_BITS,
  CALLBACK_NAMES.flatMap((name) => STAGES[name].noReplyStep ?? []),
);

/** A filter callback as register read it. */
// deno-lint-ignore no-explicit-any
type Callback = (this: unknown, ctx: Ctx, ...args: any[]) => unknown;

/** What {@linkcode register} keeps of the filter. */
interface Registration {
  /** The object given to register: the `this` of its callbacks. */
  readonly self: object;
  readonly name: string;
  /** The filter's flags as libmilter's mask. */
  readonly flags: number;
  /** The callbacks the filter has, read once at registration. */
  readonly callbacks: Readonly<Partial<Record<CallbackName, Callback>>>;
  /** The NO* steps of the stages the filter has no callback for. */
  readonly absentSteps: number;
  /** Whether libmilter calls negotiate (see {@linkcode wanted}): every connection then starts there. */
  readonly negotiates: boolean;
}

let registration: Registration | null = null;

/** Thrown inside a trampoline when a callback's answer is not valid. */
class BadReturn extends Error {
  override name = "BadReturn";
}

/** `filter[key]`, with a getter's exception turned into a MilterError. */
function property(filter: object, key: string): unknown {
  try {
    return (filter as Record<string, unknown>)[key];
  } catch (error) {
    fail("register", `reading filter.${key} threw: ${describe(error)}`, { cause: error });
  }
}

/** Checks the filter and reads what register keeps of it. */
function readFilter(filter: unknown): Registration {
  if (typeof filter !== "object" || filter === null) {
    fail("register", `expected a filter object, got ${describe(filter)}`);
  }
  const name = property(filter, "name");
  const version = property(filter, "version");
  const flags = property(filter, "flags");
  if (typeof name !== "string") fail("register", `filter.name must be a string, got ${describe(name)}`);
  if (name.includes("\0")) fail("register", "filter.name contains a NUL byte");
  if (!Number.isInteger(version)) fail("register", `filter.version must be an integer, got ${describe(version)}`);
  if ((version as number) <= 4) {
    fail(
      "register",
      `filter.version ${version} would make libmilter skip negotiate, data and unknown; use version_code`,
    );
  }
  if (!Array.isArray(flags)) fail("register", `filter.flags must be an array of Flag, got ${describe(flags)}`);
  for (const flag of flags) {
    if (!isFlag(flag)) fail("register", `filter.flags contains ${describe(flag)}, not a Flag`);
  }
  const callbacks: Partial<Record<CallbackName, Callback>> = {};
  for (const key of CALLBACK_NAMES) {
    const cb = property(filter, key);
    if (typeof cb === "function") callbacks[key] = cb as Callback;
    else if (cb !== undefined && cb !== null) {
      fail("register", `filter.${key} must be a function, null or absent, got ${describe(cb)}`);
    }
  }
  const absent = CALLBACK_NAMES.flatMap((key) => callbacks[key] ? [] : STAGES[key].absentStep ?? []);
  return Object.freeze({
    self: filter,
    name,
    flags: encodeMask(FLAG_BITS, flags as Flag[]),
    callbacks: Object.freeze(callbacks),
    absentSteps: encodeMask(STEP_BITS, absent),
    // See wanted(): negotiate comes first when the filter has one, or no connect callback.
    negotiates: callbacks.negotiate !== undefined || callbacks.connect === undefined,
  });
}

/**
 * Whether libmilter gets a trampoline for `name`. Besides the filter's own
 * callbacks: close always (it ends the session); negotiate when the filter
 * has one or no connect callback (the binding must see every connection
 * start, to refuse new ones while draining, and connect, when present, comes
 * first anyway); eom and abort whenever the filter negotiates, as it may
 * then ask for no-reply stages, whose failures eom must answer and abort
 * forget. None of these is a protocol stage the MTA could skip.
 */
function wanted(r: Registration, name: CallbackName): boolean {
  if (r.callbacks[name]) return true;
  if (name === "close") return true;
  if (name === "negotiate") return r.negotiates;
  if (name === "eom" || name === "abort") return r.callbacks.negotiate !== undefined;
  return false;
}

/**
 * Registers the filter with libmilter. Only one filter may be registered
 * per process, before {@linkcode main}. Wraps `smfi_register`.
 *
 * @throws {MilterError} when the filter is malformed, one is already registered, or libmilter refuses it.
 */
export function register(filter: Filter): void {
  const r = readFilter(filter);
  if (registration) {
    fail(
      "register",
      `filter ${JSON.stringify(registration.name)} is already registered; libmilter allows one per process`,
    );
  }
  if (lifecycle.phase !== "idle") fail("register", "main has already run");
  const lib = native("register");
  const desc: Record<string, Pointer | string | number | null> = {
    xxfi_name: r.name,
    xxfi_version: filter.version,
    xxfi_flags: r.flags,
  };
  const pointers = lib.registerCallbacks(TRAMPOLINE_HANDLERS);
  for (const { name, symbol } of Object.values(STAGES)) desc[symbol] = wanted(r, name) ? pointers[symbol] : null;
  const rc = lib.functions.smfi_register(desc as unknown as SmfiDesc);
  if (rc !== MI_SUCCESS) {
    fail(
      "register",
      `libmilter refused the filter: version 0x${filter.version.toString(16)} must have ` +
        "the major and minor numbers of the installed libmilter (use version_code)",
      { code: rc },
    );
  }
  registration = r;
  reportFor(r.name);
  lib.later?.bindWrites(failureReply(r.name), writeFailed);
}

/**
 * Reports a modification that libmilter could not send to the MTA (its
 * connection failed or timed out), done by the connection's own thread after
 * the callback had handed it over; the shim has already set 451 4.3.0 and
 * answers Tempfail. libmilter's thread still waits inside eom meanwhile, so
 * the reporter may use the Ctx.
 */
function writeFailed(ptr: Pointer, write: string): void {
  const session = sessionAt(ptr);
  if (!session || !registration) return;
  session.callback = "eom";
  try {
    report(
      milterError(
        write,
        "libmilter refused it or could not send it to the MTA (the connection failed or timed out); " +
          "the message was answered Tempfail",
      ),
      { callback: "eom", ctx: session.ctx, kind: "exception" },
    );
  } finally {
    session.callback = null;
  }
}

/**
 * @internal The total trampoline libmilter calls for `symbol`, for
 * `bench/profile.ts` to time the binding's own work without a socket.
 */
export function trampoline<K extends CallbackSymbol>(symbol: K): CallbackHandler<K> {
  return guarded(symbol, TRAMPOLINES[symbol]);
}

/** Whether a filter is registered. */
export function isRegistered(): boolean {
  return registration !== null;
}

/** Whether `session` negotiated no reply for `callback`'s stage. */
function silent(session: Session, callback: CallbackName): boolean {
  const step = STAGES[callback].noReplyStep;
  return step !== null && (session.noReply & STEP_BITS[step]) !== 0;
}

/**
 * The C code of a callback's answer, or a {@linkcode BadReturn}: `All` only
 * from negotiate, `Skip` only from body, and at a no-reply stage only
 * `No_reply` or `Continue` (both sent as no reply); `No_reply` elsewhere
 * would leave the MTA waiting.
 */
function statCode(callback: CallbackName, value: unknown, noReply: boolean): number {
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
function failureReply(filterName: string): string {
  return escapeReplyText(`mail filter ${filterName || "(unnamed)"} failed; try again later`);
}

/** What kind of failure `error` is, for any thrown value (a revoked Proxy makes `instanceof` throw). */
function kindOf(error: unknown): "bad-return" | "exception" | "timeout" {
  try {
    if (error instanceof BadReturn) return "bad-return";
    return error instanceof CallbackTimeout ? "timeout" : "exception";
  } catch {
    return "exception";
  }
}

/** Answers Tempfail with the 451 4.3.0 reply of a failed callback. */
function tempfail(ptr: Pointer, filterName: string): number {
  try {
    native("setreply").functions.smfi_setreply(ptr, "451", "4.3.0", failureReply(filterName));
  } catch {
    // the Tempfail still goes out, with the MTA's default text
  }
  return SMFIS_TEMPFAIL;
}

/**
 * What a failure answers. At a stage negotiated as no reply, libmilter would
 * turn Tempfail into silence and then lose track of the message, so the
 * failure is remembered and answered at the next stage that replies: for
 * the rest of the connection after connect or helo, for the rest of the
 * message after any later stage.
 */
function answerFailure(session: Session, callback: CallbackName, filterName: string): number {
  // A pipelined call is silent whatever its session says: libmilter has moved on.
  if (silent(session, callback) || session.queued !== null) {
    if (session.failed !== "connection") {
      session.failed = STAGES[callback].failure === "connection" ? "connection" : "message";
    }
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
function owed(session: Session, callback: CallbackName, filterName: string): number | null {
  const { failure } = STAGES[callback];
  if (session.failed === null || failure === "ignored") {
    if (callback === "abort" && session.failed === "message") session.failed = null;
    return null;
  }
  if (silent(session, callback) || session.queued !== null) return SMFIS_NOREPLY;
  if (session.failed === "message" && failure !== "command") session.failed = null; // Tempfail here ends the message
  return tempfail(session.ptr, filterName);
}

/** A callback's answer still to come: its Promise, and how its value becomes libmilter's code. */
interface Deferred {
  readonly promise: PromiseLike<unknown>;
  readonly settle: (value: unknown) => number;
}

/** Raised when a callback's Promise is still pending at `callbackTimeout`, or when libmilter stops. */
class CallbackTimeout extends Error {
  override name = "CallbackTimeout";
}

/**
 * Runs one callback for the connection at `ptr`: opens the session, calls
 * `body`, and turns anything that escapes into the failure policy. A body
 * that answers with a Promise keeps the session in its callback until the
 * Promise settles (or `callbackTimeout` passes), and libmilter's thread
 * parked in the shim until then: see {@linkcode answerLater}.
 */
function dispatch(
  callback: CallbackName,
  ptr: Pointer,
  token: number,
  body: (session: Session, r: Registration) => number | Deferred,
  queued: QueuedCall | null = null,
): number {
  const r = registration!;
  const opening = !isOpen(ptr);
  const session = enter(ptr, callback, r.flags);
  const resumed = !opening || resumeNegotiated(session, callback, r);
  session.token = token;
  session.queued = queued;
  let answer: number;
  try {
    // A connection that starts while main is stopping is refused at its
    // first callback (negotiate or connect), so the MTA tempfails it; so is
    // a session whose connection's negotiation was lost.
    if (opening && lifecycle.phase !== "running" && callback !== "close") answer = SMFIS_TEMPFAIL;
    else if (!resumed) answer = refuseUnnegotiated(session, callback, r);
    else {
      const result = owed(session, callback, r.name) ?? runInvocation(session, () => body(session, r));
      if (typeof result !== "number") return answerLater(session, callback, token, result, queued);
      answer = result;
    }
  } catch (error) {
    answer = failure(session, callback, error);
  }
  end(session, callback);
  return answer;
}

/** Refuses a session whose connection's negotiation was dropped (see resumeNegotiated): 451 4.3.0, and says why. */
function refuseUnnegotiated(session: Session, callback: CallbackName, r: Registration): number {
  reportInternal(
    `${callback} of ${session.ctx}`,
    new Error(
      `a session after SMFIC_QUIT_NC whose connection's negotiation is no longer kept (over ${keptBound} ` +
        "connections closed meanwhile); refused",
    ),
  );
  return tempfail(session.ptr, r.name);
}

/** What a failed callback answers, reported while its Ctx is still usable. */
function failure(session: Session, callback: CallbackName, error: unknown): number {
  const r = registration!;
  const answer = answerFailure(session, callback, r.name);
  const kind = kindOf(error);
  report(error, { callback, ctx: session.ctx, kind });
  return answer;
}

/** Ends a callback: its Ctx is unusable until the next one, and for good after close. */
function end(session: Session, callback: CallbackName): void {
  leave(session);
  if (callback !== "close") return;
  keepNegotiated(session, registration!);
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
function answerLater(
  session: Session,
  callback: CallbackName,
  token: number,
  deferred: Deferred,
  queued: QueuedCall | null,
): number {
  const lib = native("main");
  const later = lib.later;
  if (later === null || (token < 0 && queued === null)) {
    deferred.promise.then(undefined, () => {}); // abandoned: its rejection must not go unhandled
    const why = lib.laterUnavailable ?? "this callback was registered without the native shim";
    const code = failure(
      session,
      callback,
      new BadReturn(`the ${callback} callback returned a Promise, which needs the native shim: ${why}`),
    );
    end(session, callback);
    return code;
  }
  let settled = false;
  const answer = (compute: () => number): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    session.pending = null;
    let code: number;
    try {
      code = compute();
    } catch (error) {
      code = failure(session, callback, error);
    }
    end(session, callback);
    if (queued === null) later.reply(token, code);
    else queueDone(later, session, queued);
  };
  const timeoutMs = lifecycle.callbackTimeoutMs;
  const timer = timeoutMs === null ? undefined : setTimeout(() =>
    answer(() => {
      throw new CallbackTimeout(
        `the ${callback} callback's Promise did not settle within callbackTimeout (${timeoutMs / 1000} s)`,
      );
    }), timeoutMs);
  session.pending = () =>
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
  return later.pending;
}

/**
 * Answers every callback still waiting for its Promise with Tempfail: when
 * libmilter stops, no Promise may keep one of its threads parked.
 */
export function abandonPending(sessions: Iterable<Session>): void {
  for (const session of [...sessions]) session.pending?.();
}

/**
 * @internal What the pipeline holds and has held, `null` when it is off:
 * for tests and monitoring.
 */
export function pipelineStats(): PipelineStats | null {
  return lifecycle.pipelining ? native("main").later?.pipelineStats() ?? null : null;
}

/** The token of a call no libmilter thread waits for. */
const NO_TOKEN = -1;

/**
 * Turns pipelining on for the process, before main starts libmilter: at a
 * stage negotiated as no reply (header, eoh, body), the shim answers
 * libmilter at once, and the filter's callback runs when the JS thread gets
 * to it, in order with the connection's other callbacks. Off without the
 * shim, or when `bytes` (the bound per connection) is 0. The `macros` are
 * captured for each pipelined call, for getsymval.
 *
 * @returns whether pipelining is on.
 * @throws {Error} when the shim cannot start its thread.
 */
export function startPipeline(bytes: number, macros: readonly string[]): boolean {
  const later = native("main").later;
  if (later === null || bytes === 0) return false;
  const captured = later.bindPipeline(() => ring(later), bytes, macros);
  lifecycle.pipelineMacros = new Map(captured.map((name, index) => [macroKey(name), index]));
  lifecycle.pipelining = true;
  return true;
}

/**
 * Tells the shim which stages of this connection to pipeline: those it
 * negotiated as no reply that the filter has a callback for, among header,
 * eoh and body. Every negotiate says it, so that a context address a later
 * connection reuses never inherits an earlier connection's choice. Should
 * the shim refuse (memory), the stages run while libmilter waits, as
 * without pipelining.
 */
function pipelineStages(session: Session, r: Registration): void {
  if (!lifecycle.pipelining) return;
  const symbols = PIPELINED_SYMBOLS.filter((symbol) => {
    const { name } = stageOf(symbol);
    return r.callbacks[name] !== undefined && silent(session, name);
  });
  native("negotiate").later?.pipeline(session.ptr, symbols);
}

/**
 * The bell the shim rings while calls are queued: takes a batch of them and
 * runs them, oldest first. A connection whose earlier call is still running
 * (its Promise pending) keeps the new one in its backlog. The calls that
 * are through go back to the shim together, at the end.
 */
function ring(later: Later): void {
  const finished: QueuedCall[] = [];
  try {
    for (const call of later.take()) {
      const session = sessionAt(call.ctx);
      if (session === undefined) finished.push(call); // main has ended and released every session
      else if (session.backlog !== null) session.backlog.push(call);
      else {
        session.backlog = [];
        runQueue(session, call, finished);
      }
    }
  } catch (error) {
    reportInternal("the pipeline's bell", error);
  } finally {
    later.done(finished);
  }
}

/**
 * Runs a connection's queued calls from `call` on, in order, until one
 * answers with a Promise (its settlement goes on from there, see
 * {@linkcode queueDone}) or none is left. Each call through is added to
 * `finished`, for the caller to give back to the shim, which lets the
 * connection's next replying stage go on.
 */
function runQueue(session: Session, call: QueuedCall | undefined, finished: QueuedCall[]): void {
  const pending = native("main").later?.pending;
  while (call !== undefined) {
    // After main ended (every session released), queued calls are only given back.
    if (!session.closed && runQueued(session, call) === pending) return;
    finished.push(call);
    call = session.backlog?.shift();
  }
  session.backlog = null;
}

/** A pipelined call's Promise has settled: give the call back, and run the connection's next ones. */
function queueDone(later: Later, session: Session, call: QueuedCall): void {
  const finished = [call];
  try {
    runQueue(session, session.backlog?.shift(), finished);
  } finally {
    later.done(finished);
  }
}

/**
 * Runs one queued call through its stage's callback. A failure of the
 * binding itself is reported and answered at the next replying stage, as a
 * failed callback is: a pipelined message is never let through unfiltered.
 */
function runQueued(session: Session, call: QueuedCall): number {
  try {
    return QUEUED[call.symbol](call);
  } catch (error) {
    reportInternal(call.symbol, error);
    if (session.failed === null) session.failed = "message";
    return SMFIS_NOREPLY;
  }
}

/** How each pipelined callback runs from the shim's copy of its arguments. */
const QUEUED: { readonly [K in PipelinedSymbol]: (call: QueuedCall) => number } = {
  xxfi_header: (call) => callStage("header", call.ctx, NO_TOKEN, () => strings(call.a, call.b), call),
  xxfi_eoh: (call) => callStage("eoh", call.ctx, NO_TOKEN, () => ({ args: [] }), call),
  xxfi_body: (call) => callStage("body", call.ctx, NO_TOKEN, () => chunk(call.bytes, call.len), call),
};

/** A callback's decoded arguments, and the C strings among them for `rawargs`. */
interface Decoded {
  readonly args: unknown[];
  readonly raw?: readonly Pointer[];
}

/**
 * The answer of a callback libmilter calls for the binding's sake while the
 * filter has none (see {@linkcode wanted}): close, abort and eom continue.
 * Any other is a bug of the binding, and fails rather than let mail through.
 */
function withoutCallback(callback: CallbackName): number {
  if (callback === "close" || callback === "abort" || callback === "eom") return SMFIS_CONTINUE;
  throw new Error(`milter binding: libmilter called ${callback}, which the filter does not have`);
}

/**
 * Calls a filter callback that answers a `Stat` (or a Promise of one), with
 * the arguments `decode` reads; `queued` when the shim pipelined the call.
 */
function callStage(
  callback: CallbackName,
  ptr: Pointer,
  token: number,
  decode: () => Decoded,
  queued: QueuedCall | null = null,
): number {
  return dispatch(callback, ptr, token, (session, r) => {
    const fn = r.callbacks[callback];
    if (!fn) return withoutCallback(callback);
    const { args, raw = [] } = decode();
    session.raw = raw;
    const result = Reflect.apply(fn, r.self, [session.ctx, ...args]);
    if (!isThenable(result)) return statCode(callback, result, silent(session, callback));
    return { promise: result, settle: (value) => statCode(callback, value, silent(session, callback)) };
  }, queued);
}

/** C string arguments: the decoded strings, and their non-NULL pointers for `rawargs`. */
function strings(...pointers: (Pointer | null)[]): Decoded {
  return { args: pointers.map((p) => readCString(p) ?? ""), raw: pointers.filter((p) => p !== null) };
}

/** envfrom and envrcpt: argv[0] is the address, the rest its ESMTP arguments. */
function argv(pointer: Pointer | null): Decoded {
  const pointers = readPointers(pointer);
  return { args: splitArgv(pointers.map((p) => readCString(p)!)), raw: pointers };
}

/** body: a copy of the chunk, and its length. */
function chunk(bytes: Pointer | null, len: number): Decoded {
  const copy = readBytes(bytes, len);
  return { args: [copy, copy.length] };
}

function readSockAddr(ptr: Pointer | null): SockAddr | null {
  if (ptr === null) return null;
  return decodeSockAddr(readBytes(ptr, sockaddrLength(readUShort(ptr))));
}

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
const closedNegotiations = new Map<Pointer, { readonly actions: number; readonly noReply: number }>();

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

/** Keeps a closing session's negotiation for a next session on its connection (after SMFIC_QUIT_NC). */
function keepNegotiated(session: Session, r: Registration): void {
  if (!r.negotiates) return;
  closedNegotiations.delete(session.ptr); // re-inserted last: the Map's order is the age
  closedNegotiations.set(session.ptr, { actions: session.actions, noReply: session.noReply });
  if (closedNegotiations.size > keptBound) {
    closedNegotiations.delete(closedNegotiations.keys().next().value!);
  }
}

/**
 * Opens a session: negotiate starts a fresh connection; any other first
 * callback starts a next session after SMFIC_QUIT_NC, which takes its
 * connection's negotiation back. Returns `false` when that negotiation is
 * lost (see {@linkcode KEPT_NEGOTIATIONS}): what the MTA expects no reply to
 * is then unknown, and the session is refused.
 */
function resumeNegotiated(session: Session, callback: CallbackName, r: Registration): boolean {
  const negotiated = closedNegotiations.get(session.ptr);
  closedNegotiations.delete(session.ptr);
  if (callback === "negotiate" || !r.negotiates) return true;
  if (negotiated === undefined) return STAGES[callback].failure === "ignored";
  session.actions = negotiated.actions;
  session.noReply = negotiated.noReply;
  pipelineStages(session, r);
  return true;
}

/** Validates negotiate's answer and writes it to libmilter's output words. */
function answerNegotiate(
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
  session.actions = stat === "All" ? SMFI_CURR_ACTS : encodeMask(FLAG_BITS, flags);
  // With All, libmilter ignores the returned steps: no stage is no-reply.
  session.noReply = stat === "All" ? 0 : stepMask & NO_REPLY_MASK;
  pipelineStages(session, r);
  writeULong(pf[0], encodeMask(FLAG_BITS, flags));
  // The NO* steps of absent callbacks only where the MTA offers them, as libmilter does without a
  // negotiate callback: libmilter drops a connection asked for a step its MTA lacks.
  writeULong(pf[1], (stepMask | (r.absentSteps & offeredSteps)) >>> 0);
  writeULong(pf[2], 0);
  writeULong(pf[3], 0);
  return code;
}

/**
 * The last line of defence: whatever escapes a trampoline (a bug of the
 * binding's own bookkeeping) is reported and answers Tempfail, never koffi's
 * default of 0.
 */
function guarded<K extends CallbackSymbol>(symbol: K, handler: CallbackHandler<K>): CallbackHandler<K> {
  const fn = handler as (...args: Parameters<CallbackHandler<K>>) => number;
  return ((...args: Parameters<CallbackHandler<K>>): number => {
    try {
      return fn(...args);
    } catch (error) {
      reportInternal(symbol, error);
      return SMFIS_TEMPFAIL;
    }
  }) as CallbackHandler<K>;
}

/** Reports a failure of the binding itself, outside any callback's context; never throws. */
function reportInternal(where: string, error: unknown): void {
  try {
    const why = error instanceof Error ? error.message : describe(error);
    writeStderr(`milter: the binding failed in ${where} and answered Tempfail: ${why}`);
  } catch {
    // stderr is gone
  }
}

/** The handler of each callback: decodes its C arguments and runs the filter's callback. */
const TRAMPOLINES: { readonly [K in CallbackSymbol]: CallbackHandler<K> } = {
  xxfi_connect: (ptr, host, addr, token) =>
    callStage(
      "connect",
      ptr,
      token,
      () => ({ args: [readCString(host), readSockAddr(addr)], raw: host === null ? [] : [host] }),
    ),
  xxfi_helo: (ptr, helo, token) => callStage("helo", ptr, token, () => strings(helo)),
  xxfi_envfrom: (ptr, pointer, token) => callStage("envfrom", ptr, token, () => argv(pointer)),
  xxfi_envrcpt: (ptr, pointer, token) => callStage("envrcpt", ptr, token, () => argv(pointer)),
  xxfi_header: (ptr, name, value, token) => callStage("header", ptr, token, () => strings(name, value)),
  xxfi_eoh: (ptr, token) => callStage("eoh", ptr, token, () => ({ args: [] })),
  xxfi_body: (ptr, bytes, len, token) => callStage("body", ptr, token, () => chunk(bytes, len)),
  xxfi_eom: (ptr, token) => callStage("eom", ptr, token, () => ({ args: [] })),
  xxfi_abort: (ptr, token) => callStage("abort", ptr, token, () => ({ args: [] })),
  xxfi_close: (ptr, token) => callStage("close", ptr, token, () => ({ args: [] })),
  xxfi_unknown: (ptr, command, token) => callStage("unknown", ptr, token, () => strings(command)),
  xxfi_data: (ptr, token) => callStage("data", ptr, token, () => ({ args: [] })),
  xxfi_negotiate: (ptr, f0, f1, _f2, _f3, pf0, pf1, pf2, pf3, token) =>
    dispatch("negotiate", ptr, token, (session, r) => {
      const fn = r.callbacks.negotiate;
      if (!fn) {
        // What libmilter does without a negotiate callback: the registered
        // flags, and the NO* steps it pre-filled for absent callbacks.
        writeULong(pf0, r.flags);
        writeULong(pf1, (readULong(pf1) & ~SMFIP_SKIP) >>> 0);
        return SMFIS_CONTINUE;
      }
      const result = Reflect.apply(fn, r.self, [
        session.ctx,
        decodeMask(FLAG_BITS, f0),
        decodeMask(STEP_BITS, f1),
      ]);
      const settle = (value: unknown): number => answerNegotiate(value, [pf0, pf1, pf2, pf3], f1, session, r);
      return isThenable(result) ? { promise: result, settle } : settle(result);
    }),
};

/** The guarded trampoline of every callback, registered once per process. */
const TRAMPOLINE_HANDLERS: CallbackHandlers = Object.fromEntries(
  CALLBACK_SYMBOLS.map((symbol) => [symbol, trampoline(symbol)]),
);
