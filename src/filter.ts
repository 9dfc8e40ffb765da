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
import { type Generation, OBSERVED_SYMBOLS, type ObservedSymbol, QUEUED_ALWAYS_SYMBOLS } from "../ffi/shim.ts";
import type { SmfiDesc } from "../ffi/symbols.ts";
import { failureReply } from "./answers.ts";
import { type Ctx, enter, leave, sessionAt, usesFilter } from "./ctx.ts";
import type { SockAddr } from "./convert.ts";
import { describe, fail, milterError } from "./error.ts";
import { lifecycle } from "./lifecycle.ts";
import { logging } from "./messages.ts";
import { absentSteps } from "./negotiation.ts";
import { native } from "./native.ts";
import { type Callback, isRegistered, registered, type Registration, setRegistered, sweep } from "./registration.ts";
import { report, reportFor } from "./report.ts";
import { CALLBACK_NAMES, type CallbackName, stageOf, STAGES } from "./stages.ts";
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

/** `filter[key]`, with a getter's exception turned into a MilterError naming `fn`. */
function property(fn: string, filter: object, key: string): unknown {
  try {
    return (filter as Record<string, unknown>)[key];
  } catch (error) {
    fail(fn, `reading filter.${key} threw: ${describe(error)}`, { cause: error });
  }
}

/** Checks the filter given to `fn` and reads what is kept of it, as generation `id`. */
function readFilter(fn: string, filter: unknown, id: number): Registration {
  if (typeof filter !== "object" || filter === null) {
    fail(fn, `expected a filter object, got ${describe(filter)}`);
  }
  const name = property(fn, filter, "name");
  const version = property(fn, filter, "version");
  const flags = property(fn, filter, "flags");
  if (typeof name !== "string") fail(fn, `filter.name must be a string, got ${describe(name)}`);
  if (name.includes("\0")) fail(fn, "filter.name contains a NUL byte");
  if (!Number.isInteger(version)) fail(fn, `filter.version must be an integer, got ${describe(version)}`);
  if ((version as number) <= 4) {
    fail(fn, `filter.version ${version} would make libmilter skip negotiate, data and unknown; use version_code`);
  }
  if (!Array.isArray(flags)) fail(fn, `filter.flags must be an array of Flag, got ${describe(flags)}`);
  for (const flag of flags) {
    if (!isFlag(flag)) fail(fn, `filter.flags contains ${describe(flag)}, not a Flag`);
  }
  const callbacks: Partial<Record<CallbackName, Callback>> = {};
  for (const key of CALLBACK_NAMES) {
    const cb = property(fn, filter, key);
    if (typeof cb === "function") callbacks[key] = cb as Callback;
    else if (cb !== undefined && cb !== null) {
      fail(fn, `filter.${key} must be a function, null or absent, got ${describe(cb)}`);
    }
  }
  const absent = CALLBACK_NAMES.flatMap((key) => callbacks[key] ? [] : STAGES[key].absentStep ?? []);
  return Object.freeze({
    id,
    self: filter,
    name,
    flags: encodeMask(FLAG_BITS, flags as Flag[]),
    callbacks: Object.freeze(callbacks),
    absentSteps: encodeMask(STEP_BITS, absent),
    negotiatedByShim: false,
  });
}

/**
 * Whether JS sees calls of `name` for connections on `r`. Besides the
 * filter's own callbacks: close always (it ends the session); negotiate when
 * the filter has one, or (without the shim, which otherwise answers it) no
 * connect callback (the binding must see every connection start, to refuse
 * new ones while draining, and connect, when present, comes first anyway);
 * eom and abort whenever the filter negotiates, as it may then ask for
 * no-reply stages, whose failures eom must answer and abort forget. None of
 * these is a protocol stage the MTA could skip. Without the shim, libmilter
 * gets a trampoline for exactly these; through the shim, every wrapper, and
 * each connection's generation says which reach JS.
 */
function wanted(r: Registration, name: CallbackName): boolean {
  if (r.callbacks[name]) return true;
  if (name === "close") return true;
  if (name === "negotiate") return r.callbacks.connect === undefined;
  if (name === "eom" || name === "abort") return r.callbacks.negotiate !== undefined;
  return false;
}

/**
 * The shim's generation of `r`: a filter with a negotiate callback sees
 * every stage (it may negotiate no-reply stages, and answers the MTA's
 * absent ones itself); otherwise the shim negotiates, and relays what
 * {@linkcode wanted} says.
 */
function generationOf(r: Registration): Generation {
  const own = r.callbacks.negotiate !== undefined;
  // Observed for the log where the filter has no callback: queued, answered Continue by the shim.
  const observed = logging() && !own
    ? OBSERVED_SYMBOLS.filter((symbol) => r.callbacks[stageOf(symbol).name] === undefined)
    : [];
  const seen = (name: CallbackName): boolean =>
    own || (name !== "negotiate" && wanted(r, name)) || observed.includes(STAGES[name].symbol as ObservedSymbol) ||
    (name === "abort" && logging());
  return {
    id: r.id,
    itself: !own,
    flags: r.flags,
    absent: absentSteps(r),
    relay: CALLBACK_NAMES.filter(seen).map((name) => STAGES[name].symbol),
    queued: [
      ...QUEUED_ALWAYS_SYMBOLS.filter((symbol) => r.callbacks[stageOf(symbol).name] === undefined),
      ...observed,
    ],
  };
}

/**
 * Has the binding observe every message (for `main({ log })`): the current
 * filter is published again so that connections starting now are followed.
 */
export function observeMessages(): void {
  if (generations) native("main").relay.publish(generationOf(registered()));
}

/** Whether the shim keeps generations (see `Relay.publish`): `replace` needs them. */
let generations = false;

/** What libmilter registered: the first filter's name, version and flags. */
let registeredAs: { readonly name: string; readonly version: number; readonly flags: number } | null = null;

/** The name, version and action flags libmilter registered (the filter given to {@linkcode register}). */
export function registeredDesc(): { readonly name: string; readonly version: number; readonly flags: number } {
  return registeredAs!;
}

/**
 * Registers the filter with libmilter. Only one filter may be registered
 * per process, before {@linkcode main}. Wraps `smfi_register`.
 *
 * @throws {MilterError} when the filter is malformed, one is already registered, or libmilter refuses it.
 */
export function register(filter: Filter): void {
  const r = readFilter("register", filter, 1);
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
  const shim = lib.relay.withoutShim === null;
  for (const { name, symbol } of Object.values(STAGES)) {
    desc[symbol] = shim || wanted(r, name) ? pointers[symbol] : null;
  }
  const rc = lib.functions.smfi_register(desc as unknown as SmfiDesc);
  if (rc !== MI_SUCCESS) {
    fail(
      "register",
      `libmilter refused the filter: version 0x${filter.version.toString(16)} must have ` +
        "the major and minor numbers of the installed libmilter (use version_code)",
      { code: rc },
    );
  }
  registeredAs = { name: r.name, version: filter.version, flags: r.flags };
  // Without a negotiate callback of the filter's own, its answer is fixed now: the shim gives it.
  generations = shim && lib.relay.negotiateItself(r.flags) && lib.relay.publish(generationOf(r));
  install(r);
  lib.relay.bindWrites(failureReply(r.name), writeFailed);
}

/** Makes `r` the current filter: the shim negotiates for it when it has no negotiate callback. */
function install(r: Registration): void {
  const byShim = generations && r.callbacks.negotiate === undefined;
  setRegistered(byShim ? Object.freeze({ ...r, negotiatedByShim: true }) : r);
  reportFor(r.name);
}

/**
 * Installs a new filter while the milter runs (or before main): connections
 * that start from now on use `filter`; connections already open finish on
 * the filter they started with, whose callbacks keep running for them. The
 * two may differ in name, flags and callbacks: each connection negotiates
 * with the MTA for its own filter. Not in the OCaml module: libmilter
 * registers one filter per process, and this binding puts its own wrappers
 * between libmilter and the filters. The reply of a write libmilter refuses
 * (`451 4.3.0 mail filter … failed`) keeps naming the registered filter.
 *
 * @throws {MilterError} when the filter is malformed, none was registered,
 *   main has stopped, or the native shim (which keeps each connection's
 *   filter) is not there.
 */
export function replace(filter: Filter): void {
  if (!isRegistered()) fail("replace", "register a filter first");
  const r = readFilter("replace", filter, registered().id + 1);
  if (lifecycle.phase === "stopped") fail("replace", "main has stopped");
  const relay = native("replace").relay;
  if (!generations) {
    fail(
      "replace",
      `replacing a filter needs the native shim, which keeps each connection's filter: ${
        relay.withoutShim ?? "libmilter lacks smfi_setpriv"
      }`,
    );
  }
  if (!relay.publish(generationOf(r))) fail("replace", "the native shim refused the new filter (out of memory)");
  install(r);
  sweep((old) => old.id === registered().id || relay.live(old.id) || usesFilter(old));
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
  enter(ptr, "eom", session.filter); // for the reporter, a call of eom of its own
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
