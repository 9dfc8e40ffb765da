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
  SMFIS_TEMPFAIL,
} from "../ffi/constants.ts";
import {
  type Pointer,
  readBytes,
  readCString,
  readPointers,
  readULong,
  readUShort,
  registerCallback,
  writeULong,
} from "../ffi/memory.ts";
import type { CallbackSymbol } from "../ffi/symbols.ts";
import { decodeSockAddr, escapeReplyText, type SockAddr, sockaddrLength, splitArgv } from "./convert.ts";
import { CALLBACK_NAMES, type CallbackName, type Ctx, enter, isOpen, leave, release, type Session } from "./ctx.ts";
import { describe, fail } from "./error.ts";
import { lifecycle } from "./lifecycle.ts";
import { native } from "./native.ts";
import { report } from "./report.ts";
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
 * A mail filter: its name, version, the actions it may take, and the
 * callbacks for the stages it wants to see. A callback left out (or `null`)
 * is registered with libmilter as NULL, so the MTA does not even send that
 * stage. Every callback runs on the JS thread while libmilter's thread for
 * the connection waits, and must return its answer synchronously.
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
  connect?: ((ctx: Ctx, host: string | null, addr: SockAddr | null) => Stat) | null;
  /** Called for each HELO/EHLO (zero or more times per connection), with its argument. */
  helo?: ((ctx: Ctx, helo: string) => Stat) | null;
  /** Called for MAIL FROM, with the sender address (with its `<>`) and the ESMTP arguments in wire order. */
  envfrom?: ((ctx: Ctx, sender: string, args: string[]) => Stat) | null;
  /** Called for each RCPT TO, with the recipient address (with its `<>`) and the ESMTP arguments in wire order. */
  envrcpt?: ((ctx: Ctx, rcpt: string, args: string[]) => Stat) | null;
  /** Called for each message header, with its name and value. */
  header?: ((ctx: Ctx, name: string, value: string) => Stat) | null;
  /** Called once after the last header. */
  eoh?: ((ctx: Ctx) => Stat) | null;
  /** Called for each piece of the body (a copy, still valid after the callback returns) and its length. */
  body?: ((ctx: Ctx, chunk: Uint8Array, length: number) => Stat) | null;
  /** Called once at end of message; the only place message modifications are allowed. */
  eom?: ((ctx: Ctx) => Stat) | null;
  /**
   * Called when the current message is aborted; must reclaim per-message
   * resources. `abort` and `eom` exclude each other. Its answer is ignored.
   */
  abort?: ((ctx: Ctx) => Stat) | null;
  /**
   * Called when the connection closes, even after an abort, and possibly as
   * the only callback of a connection. Its answer is ignored. The private
   * data is released after it returns, whether or not the filter clears it.
   */
  close?: ((ctx: Ctx) => Stat) | null;
  /** Called for an SMTP command the MTA does not know or implement, with the command. */
  unknown?: ((ctx: Ctx, command: string) => Stat) | null;
  /** Called for the DATA command. */
  data?: ((ctx: Ctx) => Stat) | null;
  /**
   * Called once at connection start with the actions and steps the MTA
   * offers; returns a `Stat` (`Continue` to use the returned lists, `All` to
   * take everything offered, anything else to refuse the connection) and the
   * actions and steps the filter requires. The `NO*` steps of the callbacks
   * the filter leaves out are always added, as libmilter does without a
   * negotiate callback.
   */
  negotiate?: ((ctx: Ctx, flags: Flag[], steps: Step[]) => [Stat, Flag[], Step[]]) | null;
}

/**
 * A filter with name `""`, version {@linkcode version_code}, no flags and no
 * callbacks; spread it and set what you need.
 */
export const empty: Readonly<Filter> = Object.freeze({ name: "", version: version_code, flags: [] });

/** The NO* step libmilter asks for when a stage's callback is absent. */
const STEP_OF_ABSENT: Partial<Record<CallbackName, Step>> = {
  connect: "NOCONNECT",
  helo: "NOHELO",
  envfrom: "NOMAIL",
  envrcpt: "NORCPT",
  header: "NOHDRS",
  eoh: "NOEOH",
  body: "NOBODY",
  unknown: "NOUNKNOWN",
  data: "NODATA",
};

/** The registered filter, frozen at registration. */
let registered: Readonly<Filter> | null = null;
let registeredFlags = 0;
let absentSteps = 0;
/** The function pointers handed to libmilter; kept for the life of the process. */
const keepAlive: Pointer[] = [];

/** Thrown inside a trampoline when a callback's answer is not valid. */
class BadReturn extends Error {
  override name = "BadReturn";
}

function validateFilter(filter: unknown): Filter {
  if (typeof filter !== "object" || filter === null) {
    fail("register", `expected a filter object, got ${describe(filter)}`);
  }
  const f = filter as Record<string, unknown>;
  if (typeof f.name !== "string") fail("register", `filter.name must be a string, got ${describe(f.name)}`);
  if (f.name.includes("\0")) fail("register", "filter.name contains a NUL byte");
  if (!Number.isInteger(f.version)) fail("register", `filter.version must be an integer, got ${describe(f.version)}`);
  if ((f.version as number) <= 4) {
    fail(
      "register",
      `filter.version ${f.version} would make libmilter skip negotiate, data and unknown; use version_code`,
    );
  }
  if (!Array.isArray(f.flags)) fail("register", `filter.flags must be an array of Flag, got ${describe(f.flags)}`);
  for (const flag of f.flags) {
    if (!isFlag(flag)) fail("register", `filter.flags contains ${describe(flag)}, not a Flag`);
  }
  for (const name of CALLBACK_NAMES) {
    const cb = f[name];
    if (cb !== undefined && cb !== null && typeof cb !== "function") {
      fail("register", `filter.${name} must be a function, null or absent, got ${describe(cb)}`);
    }
  }
  return filter as Filter;
}

/**
 * Registers the filter with libmilter. Only one filter may be registered
 * per process, before {@linkcode main}. Wraps `smfi_register`.
 *
 * @throws {MilterError} when the filter is malformed, one is already registered, or libmilter refuses it.
 */
export function register(filter: Filter): void {
  const f = validateFilter(filter);
  if (registered) {
    fail(
      "register",
      `filter ${JSON.stringify(registered.name)} is already registered; libmilter allows one per process`,
    );
  }
  if (lifecycle.phase !== "idle") fail("register", "main has already run");
  const lib = native("register");
  const frozen = Object.freeze({ ...f, flags: Object.freeze([...f.flags]) as Flag[] });
  const desc: Record<string, unknown> = {
    xxfi_name: f.name,
    xxfi_version: f.version,
    xxfi_flags: encodeMask(FLAG_BITS, f.flags),
  };
  for (const name of CALLBACK_NAMES) {
    const symbol = `xxfi_${name}` as CallbackSymbol;
    // close is always registered: it ends the session. negotiate is
    // registered when the filter has one, or no connect callback: the
    // binding must see every connection start to refuse the new ones while
    // draining, and connect, when present, comes first anyway (one relay
    // less per connection). Neither is a protocol stage, so the MTA still
    // skips every stage the filter leaves out.
    const wanted = typeof f[name] === "function" || name === "close" ||
      (name === "negotiate" && typeof f.connect !== "function");
    if (wanted) {
      const ptr = registerCallback(trampoline(symbol), lib.callbackTypes[symbol]);
      keepAlive.push(ptr);
      desc[symbol] = ptr;
    } else {
      desc[symbol] = null;
    }
  }
  const rc = lib.fn.smfi_register(desc) as number;
  if (rc !== MI_SUCCESS) {
    fail(
      "register",
      `libmilter refused the filter: version 0x${(f.version as number).toString(16)} must have ` +
        "the major and minor numbers of the installed libmilter (use version_code)",
      { code: rc },
    );
  }
  registered = frozen;
  registeredFlags = encodeMask(FLAG_BITS, f.flags);
  absentSteps = encodeMask(
    STEP_BITS,
    CALLBACK_NAMES.flatMap((name) => {
      const step = STEP_OF_ABSENT[name];
      return step && typeof f[name] !== "function" ? [step] : [];
    }),
  );
  lifecycle.filterName = f.name;
}

/**
 * @internal The total trampoline libmilter calls for `symbol`, for
 * `bench/profile.ts` to time the binding's own work without a socket.
 */
// deno-lint-ignore no-explicit-any
export function trampoline(symbol: CallbackSymbol): (...args: any[]) => number {
  return total(TRAMPOLINES[symbol]);
}

/** The registered filter, or `null`. */
export function registeredFilter(): Readonly<Filter> | null {
  return registered;
}

/** The C code of a callback's answer, or a {@linkcode BadReturn}. */
function statCode(callback: CallbackName, value: unknown): number {
  if (!isStat(value) || (value === "All" && callback !== "negotiate")) {
    const hint = typeof (value as { then?: unknown })?.then === "function"
      ? "; callbacks must answer synchronously (libmilter's thread waits for the return value)"
      : "";
    throw new BadReturn(`the ${callback} callback returned ${describe(value)}, not a Stat${hint}`);
  }
  return STAT_CODES[value];
}

/** The reply set when a callback fails: 451 4.3.0, as pymilter does. */
function failureReply(filterName: string): string {
  return escapeReplyText(`mail filter ${filterName || "(unnamed)"} failed; try again later`);
}

/** Stages where no SMTP reply can follow (so no reply text is set). */
const NO_REPLY_STAGES: ReadonlySet<CallbackName> = new Set(["negotiate", "abort", "close"]);

/**
 * Runs one callback for the connection at `ptr`: opens the session, calls
 * `body`, and turns anything that escapes into the failure policy.
 */
function dispatch(
  callback: CallbackName,
  ptr: Pointer,
  body: (session: Session, filter: Readonly<Filter>) => number,
): number {
  const filter = registered!;
  const opening = !isOpen(ptr);
  const session = enter(ptr, callback, registeredFlags);
  try {
    // A connection that starts while main is stopping is refused at its
    // first callback (negotiate or connect), so the MTA tempfails it.
    if (opening && lifecycle.phase !== "running" && callback !== "close") return SMFIS_TEMPFAIL;
    return body(session, filter);
  } catch (error) {
    const kind = error instanceof BadReturn ? "bad-return" : "exception";
    if (!NO_REPLY_STAGES.has(callback)) {
      try {
        native("setreply").fn.smfi_setreply(ptr, "451", "4.3.0", failureReply(filter.name));
      } catch {
        // the Tempfail below still goes out, with the MTA's default text
      }
    }
    report(error, { callback, filter: filter.name, ctx: session.ctx, kind });
    return SMFIS_TEMPFAIL;
  } finally {
    leave(session);
    if (callback === "close") release(session);
  }
}

/** A callback's decoded arguments, and the C strings among them for `rawargs`. */
interface Decoded {
  readonly args: unknown[];
  readonly raw?: readonly Pointer[];
}

/** Calls a filter callback that answers a plain `Stat`, with the arguments `decode` reads. */
function simple(callback: CallbackName, ptr: Pointer, decode: () => Decoded): number {
  return dispatch(callback, ptr, (session, filter) => {
    const fn = filter[callback] as ((ctx: Ctx, ...rest: unknown[]) => unknown) | null | undefined;
    if (!fn) return SMFIS_CONTINUE; // close is registered for the binding's sake
    const { args, raw = [] } = decode();
    session.raw = raw;
    const result = fn(session.ctx, ...args);
    if (typeof (result as { then?: unknown })?.then === "function") {
      (result as Promise<unknown>).then(
        undefined,
        (error) => report(error, { callback, filter: filter.name, ctx: session.ctx, kind: "exception" }),
      );
    }
    return statCode(callback, result);
  });
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

function readSockAddr(ptr: Pointer | null): SockAddr | null {
  if (ptr === null) return null;
  return decodeSockAddr(readBytes(ptr, sockaddrLength(readUShort(ptr))));
}

/** Validates negotiate's answer and writes it to libmilter's output words. */
function answerNegotiate(result: unknown, pf: readonly Pointer[], session: Session): number {
  if (!Array.isArray(result) || result.length !== 3) {
    throw new BadReturn(`the negotiate callback returned ${describe(result)}, not [Stat, Flag[], Step[]]`);
  }
  const [stat, flags, steps] = result as unknown[];
  const code = statCode("negotiate", stat);
  if (!Array.isArray(flags) || !flags.every(isFlag)) {
    throw new BadReturn(`the negotiate callback's flags are ${describe(flags)}, not Flag[]`);
  }
  if (!Array.isArray(steps) || !steps.every(isStep)) {
    throw new BadReturn(`the negotiate callback's steps are ${describe(steps)}, not Step[]`);
  }
  session.actions = stat === "All" ? SMFI_CURR_ACTS : encodeMask(FLAG_BITS, flags);
  writeULong(pf[0], encodeMask(FLAG_BITS, flags));
  writeULong(pf[1], (encodeMask(STEP_BITS, steps) | absentSteps) >>> 0);
  writeULong(pf[2], 0);
  writeULong(pf[3], 0);
  return code;
}

/**
 * The last line of defence: whatever escapes a trampoline (even the
 * binding's own bookkeeping) answers Tempfail, never koffi's default of 0.
 */
// deno-lint-ignore no-explicit-any
function total<F extends (...args: any[]) => number>(fn: F): F {
  return ((...args: Parameters<F>): number => {
    try {
      return fn(...args);
    } catch {
      return SMFIS_TEMPFAIL;
    }
  }) as F;
}

// deno-lint-ignore no-explicit-any
const TRAMPOLINES: Record<CallbackSymbol, (...args: any[]) => number> = {
  xxfi_connect: (ptr: Pointer, host: Pointer | null, addr: Pointer | null) =>
    simple("connect", ptr, () => ({ args: [readCString(host), readSockAddr(addr)], raw: host === null ? [] : [host] })),
  xxfi_helo: (ptr: Pointer, helo: Pointer | null) => simple("helo", ptr, () => strings(helo)),
  xxfi_envfrom: (ptr: Pointer, pointer: Pointer | null) => simple("envfrom", ptr, () => argv(pointer)),
  xxfi_envrcpt: (ptr: Pointer, pointer: Pointer | null) => simple("envrcpt", ptr, () => argv(pointer)),
  xxfi_header: (ptr: Pointer, name: Pointer | null, value: Pointer | null) =>
    simple("header", ptr, () => strings(name, value)),
  xxfi_eoh: (ptr: Pointer) => simple("eoh", ptr, () => ({ args: [] })),
  xxfi_body: (ptr: Pointer, chunk: Pointer | null, len: number | bigint) =>
    simple("body", ptr, () => {
      const bytes = readBytes(chunk, Number(len));
      return { args: [bytes, bytes.length] };
    }),
  xxfi_eom: (ptr: Pointer) => simple("eom", ptr, () => ({ args: [] })),
  xxfi_abort: (ptr: Pointer) => simple("abort", ptr, () => ({ args: [] })),
  xxfi_close: (ptr: Pointer) => simple("close", ptr, () => ({ args: [] })),
  xxfi_unknown: (ptr: Pointer, command: Pointer | null) => simple("unknown", ptr, () => strings(command)),
  xxfi_data: (ptr: Pointer) => simple("data", ptr, () => ({ args: [] })),
  xxfi_negotiate: (
    ptr: Pointer,
    f0: number | bigint,
    f1: number | bigint,
    _f2: unknown,
    _f3: unknown,
    pf0: Pointer,
    pf1: Pointer,
    pf2: Pointer,
    pf3: Pointer,
  ) =>
    dispatch("negotiate", ptr, (session, filter) => {
      const pf = [pf0, pf1, pf2, pf3];
      if (!filter.negotiate) {
        // What libmilter does without a negotiate callback: the registered
        // flags, and the NO* steps it pre-filled for absent callbacks.
        writeULong(pf0, registeredFlags);
        writeULong(pf1, (readULong(pf1) & ~SMFIP_SKIP) >>> 0);
        return SMFIS_CONTINUE;
      }
      const result = filter.negotiate(
        session.ctx,
        decodeMask(FLAG_BITS, Number(f0)),
        decodeMask(STEP_BITS, Number(f1)),
      );
      return answerNegotiate(result, pf, session);
    }),
};
