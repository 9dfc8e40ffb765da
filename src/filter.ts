/**
 * The filter description and its registration with libmilter. The calls of
 * its callbacks are in `calls.ts` and `trampolines.ts`, their answers in
 * `answers.ts`, the failure policy in `failure.ts`, negotiation in
 * `negotiation.ts`, the pipeline in `pipeline.ts`; the table of stages they
 * share in `stages.ts`.
 *
 * @module
 */

import { MI_SUCCESS, SMFI_VERSION } from "../ffi/constants.ts";
import type { Pointer } from "../ffi/memory.ts";
import type { SmfiDesc } from "../ffi/symbols.ts";
import { failureReply } from "./answers.ts";
import { type Ctx, enter, leave, sessionAt } from "./ctx.ts";
import type { SockAddr } from "./convert.ts";
import { describe, fail, milterError } from "./error.ts";
import { lifecycle } from "./lifecycle.ts";
import { native } from "./native.ts";
import { type Callback, isRegistered, registered, type Registration, setRegistered } from "./registration.ts";
import { report, reportFor } from "./report.ts";
import { CALLBACK_NAMES, type CallbackName, STAGES } from "./stages.ts";
import { TRAMPOLINE_HANDLERS } from "./trampolines.ts";
import { encodeMask, type Flag, FLAG_BITS, isFlag, type Stat, type Step, STEP_BITS } from "./variants.ts";

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
    negotiatedByShim: false,
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
  if (isRegistered()) {
    fail(
      "register",
      `filter ${JSON.stringify(registered().name)} is already registered; libmilter allows one per process`,
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
  // Without a negotiate callback of the filter's own, its answer is fixed now: the shim gives it.
  const byShim = r.negotiates && r.callbacks.negotiate === undefined && lib.relay.negotiateItself(r.flags);
  setRegistered(byShim ? Object.freeze({ ...r, negotiatedByShim: true }) : r);
  reportFor(r.name);
  lib.relay.bindWrites(failureReply(r.name), writeFailed);
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
  if (!session || !isRegistered()) return;
  enter(ptr, "eom", session.actions); // for the reporter, a call of eom of its own
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
    leave(session);
  }
}
