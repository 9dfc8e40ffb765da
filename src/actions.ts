/**
 * The functions a filter calls on a connection's {@linkcode Ctx}: macros,
 * private data, replies, and the message modifications of end of message.
 * Each wraps one `smfi_*` function; each checks first that the context is
 * usable now and that the call is allowed in the running callback, so misuse
 * is a clear {@linkcode MilterError} rather than a crash or a silent no-op.
 *
 * The modifications of end of message write to the MTA. Where the native
 * shim is available they are handed to the connection's own libmilter
 * thread, which sends them in order before the callback's answer: an MTA
 * that stops reading stalls only its own connection. A write that libmilter
 * then cannot complete answers the message Tempfail (451 4.3.0) and is
 * reported; the function itself returned already.
 *
 * @module
 */

import { cStringBytes } from "../ffi/libc.ts";
import { MAX_LINES, setmlreply as callSetmlreply } from "../ffi/setmlreply.ts";
import { active, type Session } from "./ctx.ts";
import { CALLBACK_NAMES, type CallbackName } from "./stages.ts";
import { check, describe, fail, requireInt } from "./error.ts";
import type { Libmilter } from "../ffi/load.ts";
import type { QueuedCall, ShimWrite } from "../ffi/shim.ts";
import type { OptionalSymbol } from "../ffi/symbols.ts";
import { lifecycle } from "./lifecycle.ts";
import { native } from "./native.ts";
import { noteReply } from "./messages.ts";
import { macroKey, replyCodeProblem, replyLinesProblem } from "./convert.ts";
import { type Flag, FLAG_BITS, isStage, type Stage, STAGE_CODES } from "./variants.ts";
import type { Ctx } from "./ctx.ts";

/**
 * One facade function, named once: the checks of its arguments and context,
 * its errors (`Milter.<name>: …`) and its calls into libmilter all say which
 * function they belong to.
 */
class Op {
  constructor(readonly name: string) {}

  /** Throws the function's {@linkcode MilterError}. */
  fail(reason: string): never {
    return fail(this.name, reason);
  }

  /** The check funnel: returns on MI_SUCCESS, else throws with `why()` as the reason. */
  check(rc: number, why?: () => string): void {
    check(this.name, rc, why);
  }

  /** libmilter's functions, loading the library on first use. */
  get libmilter(): Libmilter["functions"] {
    return native(this.name).functions;
  }

  /** `value` as a string argument without NUL bytes. */
  string(what: string, value: unknown): string {
    if (typeof value !== "string") this.fail(`${what} must be a string, got ${describe(value)}`);
    if (value.includes("\0")) this.fail(`${what} contains a NUL byte`);
    return value;
  }

  /** `value` as a string argument that libmilter requires non-empty. */
  nonEmpty(what: string, value: unknown): string {
    if (this.string(what, value) === "") this.fail(`${what} must not be empty`);
    return value as string;
  }

  /** `value` as an optional string argument: `null` for null or undefined. */
  optionalString(what: string, value: unknown): string | null {
    return value === null || value === undefined ? null : this.string(what, value);
  }

  /** `value` as an integer from `min` to a C int's maximum. */
  int(what: string, value: unknown, min: number): number {
    return requireInt(this.name, what, value, min);
  }

  /**
   * A header name: printable US-ASCII without `:` or space (RFC 5322 field
   * name). Anything else would make the MTA write a different header, or
   * several, than the one asked for.
   */
  headerName(name: unknown): string {
    const text = this.string("the header name", name);
    if (!/^[\x21-\x39\x3b-\x7e]+$/.test(text)) {
      this.fail(`the header name ${describe(text)} must be printable US-ASCII without ":" or spaces (RFC 5322)`);
    }
    return text;
  }

  /**
   * A header value: a line break is allowed only to fold it (CRLF or LF
   * followed by a space or tab), so that a value can never start a header or
   * the body of its own.
   */
  headerValue(value: unknown): string {
    const text = this.string("the header value", value);
    if (/\r(?!\n)|\r?\n(?![ \t])/.test(text)) {
      this.fail(
        "the header value has a line break that does not fold it (CR, LF or CRLF not followed by a space or tab)",
      );
    }
    return text;
  }

  /**
   * Checks that a header modification fits in one libmilter command: name,
   * value, their NULs and (`indexed`) the header index, at most the size set
   * by setmaxdatasize (libmilter's default 65535).
   */
  headerFits(name: string, value: string | null, indexed: boolean): void {
    const encoder = new TextEncoder();
    const size = encoder.encode(name).length + encoder.encode(value ?? "").length + 2 + (indexed ? 4 : 0);
    if (size > lifecycle.maxDataSize) {
      this.fail(
        `the header is ${size} bytes, more than libmilter sends in one command ` +
          `(${lifecycle.maxDataSize}; raise it with setmaxdatasize, within what the MTA accepts)`,
      );
    }
  }

  /** The session of `ctx`, checked to be usable now. */
  session(ctx: unknown): Session {
    return active(this.name, ctx);
  }

  /**
   * `session`, checked not to be running a pipelined callback, where
   * libmilter's thread has moved on to the connection's next commands; `why`
   * says what to do instead.
   */
  notPipelined(session: Session, why: string): Session {
    if (session.queued !== null) {
      this.fail(
        `the ${
          session.invocation!.callback
        } callback is pipelined (its stage was negotiated as no reply, so libmilter ` +
          `does not wait for it): ${why}`,
      );
    }
    return session;
  }

  /** The session of `ctx`, checked to be running one of the `allowed` callbacks. */
  inCallback(ctx: unknown, allowed: readonly CallbackName[]): Session {
    const session = this.session(ctx);
    const { callback } = session.invocation!;
    if (!allowed.includes(callback)) {
      this.fail(`only allowed in ${allowed.join(" or ")}, not in ${callback}`);
    }
    return session;
  }

  /**
   * A modification at end of message: the session, checked to have declared
   * `flag`, with the reason libmilter may still refuse it.
   */
  inEom(ctx: unknown, flag: Flag): [Session, () => string] {
    const session = this.inCallback(ctx, ["eom"]);
    if ((session.actions & FLAG_BITS[flag]) === 0) {
      this.fail(`the filter did not declare Flag.${flag} (in Filter.flags or from negotiate)`);
    }
    const why = (): string => `libmilter refused (the MTA may not offer Flag.${flag}, or the connection failed)`;
    return [session, why];
  }

  /**
   * Sends a write to the MTA. Where the shim takes writes, the connection's
   * own thread (parked in libmilter's callback) does it, in order, before the
   * callback answers, so that an MTA that stopped reading stalls only its own
   * connection; a write libmilter refuses then turns the answer into Tempfail
   * 451 4.3.0, reported. Otherwise it is done here, on the JS thread.
   */
  write(session: Session, write: ShimWrite, direct: () => number, why?: () => string): void {
    const lib = native(this.name);
    const optional = OPTIONAL_WRITES[write.kind];
    if (optional && !lib.has(optional)) return this.check(direct(), why); // raises the missing function's error
    const sent = lib.relay.write(session.invocation?.token ?? -1, write, direct);
    if (sent === null) this.fail("the callback has already answered; nothing was sent");
    this.check(sent, why);
  }
}

/** The writes whose libmilter function a build may lack. */
const OPTIONAL_WRITES: Partial<Record<ShimWrite["kind"], OptionalSymbol>> = {
  insheader: "smfi_insheader",
  chgfrom: "smfi_chgfrom",
  addrcpt_par: "smfi_addrcpt_par",
};

const GETSYMVAL: Op = new Op("getsymval");
const GETPRIV: Op = new Op("getpriv");
const SETPRIV: Op = new Op("setpriv");
const SETREPLY: Op = new Op("setreply");
const SETMLREPLY: Op = new Op("setmlreply");
const ADDHEADER: Op = new Op("addheader");
const CHGHEADER: Op = new Op("chgheader");
const INSHEADER: Op = new Op("insheader");
const CHGFROM: Op = new Op("chgfrom");
const ADDRCPT: Op = new Op("addrcpt");
const ADDRCPT_PAR: Op = new Op("addrcpt_par");
const DELRCPT: Op = new Op("delrcpt");
const REPLACEBODY: Op = new Op("replacebody");
const PROGRESS: Op = new Op("progress");
const QUARANTINE: Op = new Op("quarantine");
const SETSYMLIST: Op = new Op("setsymlist");
const RAWARGS: Op = new Op("rawargs");

/** Why setreply and setmlreply refuse a pipelined callback. */
const NO_REPLY_FOLLOWS = "no reply follows its stage; a failure there is answered 451 4.3.0 at the next stage " +
  "that replies, which may set a reply of its own";

/** Where an SMTP reply can follow: every callback but negotiate. */
const REPLY_STAGES: readonly CallbackName[] = CALLBACK_NAMES.filter((c) => c !== "negotiate");

/**
 * The value of the macro `name` (`"i"`, `"{client_addr}"`; a one-letter
 * name may also be written in braces), or `null` when the MTA did not send
 * it for this stage or an earlier one. Which macros exist depends on the MTA and its
 * configuration. In a pipelined callback (a header, eoh or body stage
 * negotiated as no reply), the value the macro had at that stage, as the
 * shim captured it, for the macros of `main({ pipelineMacros })`. Wraps
 * `smfi_getsymval`.
 *
 * @throws {MilterError} outside a callback of the context's connection, or
 *   in a pipelined callback for a macro not among `pipelineMacros`.
 */
export function getsymval(ctx: Ctx, name: string): string | null {
  const session = GETSYMVAL.session(ctx);
  GETSYMVAL.string("the macro name", name);
  if (session.queued !== null) return captured(session, session.queued, name);
  return GETSYMVAL.libmilter.smfi_getsymval(session.ptr, name);
}

/**
 * getsymval in a pipelined callback: the value the shim captured when the
 * call was queued, for the macros of `main({ pipelineMacros })`; libmilter
 * itself may be storing the next stage's macros meanwhile.
 */
function captured(session: Session, call: QueuedCall, name: string): string | null {
  const index = lifecycle.pipelineMacros.get(macroKey(name));
  if (index === undefined) {
    GETSYMVAL.notPipelined(
      session,
      `only the macros of main's pipelineMacros are kept for it, and ${JSON.stringify(name)} is not among them; ` +
        "add it there, or read it in a stage that replies and keep it with setpriv",
    );
  }
  return native(GETSYMVAL.name).relay.symval(call, index!);
}

/**
 * The private data of this connection set by {@linkcode setpriv}, or `null`.
 * Any JS value can be kept; nothing reaches C.
 *
 * @throws {MilterError} outside a callback of the context's connection.
 */
export function getpriv<T = unknown>(ctx: Ctx): T | null {
  return GETPRIV.session(ctx).priv as T | null;
}

/**
 * Sets (or with `null`, clears) the private data of this connection. It is
 * dropped automatically after the `close` callback returns, so nothing of it
 * outlives the connection.
 *
 * @throws {MilterError} outside a callback of the context's connection.
 */
export function setpriv<T>(ctx: Ctx, data: T | null | undefined): void {
  SETPRIV.session(ctx).priv = data ?? null;
}

/**
 * `setreply(ctx, rcode, xcode, message)` sets the SMTP reply used when the
 * callback answers `Reject` (`rcode` 5xx) or `Tempfail` (4xx): `xcode` is an
 * optional RFC 3463 code of the same class (`"5.7.1"`), `message` the
 * optional text. A reply whose class does not match the answer is ignored by
 * libmilter. Wraps `smfi_setreply`.
 *
 * @throws {MilterError} outside a callback, in a pipelined one (no reply
 *   follows its stage), or when the codes or text are invalid.
 */
export function setreply(ctx: Ctx, rcode: string, xcode?: string | null, message?: string | null): void {
  const op = SETREPLY;
  const session = op.notPipelined(op.inCallback(ctx, REPLY_STAGES), NO_REPLY_FOLLOWS);
  op.string("rcode", rcode);
  const x = op.optionalString("xcode", xcode);
  const text = op.optionalString("message", message);
  const problem = replyCodeProblem(rcode, x) ?? (text === null ? null : replyLinesProblem([text]));
  if (problem) op.fail(problem);
  op.check(op.libmilter.smfi_setreply(session.ptr, rcode, x, text));
  noteReply(session, [rcode, x, text].filter((part) => part !== null).join(" "));
}

/**
 * The same as {@linkcode setreply} with a multi-line text: 1 to 32 lines,
 * each at most 980 bytes without CR or LF. Wraps the variadic
 * `smfi_setmlreply`, always NULL-terminated.
 *
 * @throws {MilterError} outside a callback, in a pipelined one (no reply
 *   follows its stage), or when the codes or lines are invalid (never truncated).
 */
export function setmlreply(ctx: Ctx, rcode: string, xcode: string | null | undefined, lines: string[]): void {
  const op = SETMLREPLY;
  const session = op.notPipelined(op.inCallback(ctx, REPLY_STAGES), NO_REPLY_FOLLOWS);
  op.string("rcode", rcode);
  const x = op.optionalString("xcode", xcode);
  if (!Array.isArray(lines)) op.fail(`lines must be an array of strings, got ${describe(lines)}`);
  const problem = replyCodeProblem(rcode, x) ?? replyLinesProblem(lines);
  if (problem) op.fail(problem);
  for (const line of lines) op.string("a line", line);
  if (lines.length > MAX_LINES) op.fail(`at most ${MAX_LINES} lines can be passed to libmilter on this platform`);
  op.check(callSetmlreply(native(op.name), session.ptr, rcode, x, lines));
  noteReply(session, [rcode, x, lines[0] ?? null].filter((part) => part !== null).join(" "));
}

/**
 * `addheader(ctx, name, value)` appends the header `name: value` to the
 * message. Only from `eom`, with `Flag.ADDHDRS`. The name must be printable
 * US-ASCII without `:` or spaces; the value may break lines only to fold
 * them (CRLF or LF, then a space or tab): unlike C libmilter, which passes
 * them on, the binding refuses a name or value that would inject another
 * header. Wraps `smfi_addheader`.
 *
 * @throws {MilterError} outside eom, without the flag, for a name or value as above, or when libmilter fails.
 */
export function addheader(ctx: Ctx, name: string, value: string): void {
  const op = ADDHEADER;
  const [session, why] = op.inEom(ctx, "ADDHDRS");
  op.headerName(name);
  op.headerValue(value);
  op.headerFits(name, value, false);
  op.write(
    session,
    { kind: "addheader", a: name, b: value },
    () => op.libmilter.smfi_addheader(session.ptr, name, value),
    why,
  );
}

/**
 * `chgheader(ctx, name, index, value)` changes the `index`-th occurrence
 * (from 1) of header `name` to `value`, or deletes it when `value` is
 * `null`. Only from `eom`, with `Flag.CHGHDRS`. Names and values are checked
 * as for {@linkcode addheader}. Wraps `smfi_chgheader`.
 *
 * @throws {MilterError} outside eom, without the flag, for a bad name or value, or when libmilter fails.
 */
export function chgheader(ctx: Ctx, name: string, index: number, value: string | null | undefined): void {
  const op = CHGHEADER;
  const [session, why] = op.inEom(ctx, "CHGHDRS");
  op.headerName(name);
  op.int("the index", index, 0);
  const v = value === null || value === undefined ? null : op.headerValue(value);
  op.headerFits(name, v, true);
  op.write(
    session,
    { kind: "chgheader", a: name, index, b: v },
    () => op.libmilter.smfi_chgheader(session.ptr, name, index, v),
    why,
  );
}

/**
 * `insheader(ctx, index, name, value)` inserts the header `name: value` at
 * position `index` (0 is the top). Only from `eom`, with `Flag.ADDHDRS`.
 * Names and values are checked as for {@linkcode addheader}. Wraps
 * `smfi_insheader`.
 *
 * @throws {MilterError} outside eom, without the flag, for a bad name or value, or when libmilter fails.
 */
export function insheader(ctx: Ctx, index: number, name: string, value: string): void {
  const op = INSHEADER;
  const [session, why] = op.inEom(ctx, "ADDHDRS");
  op.int("the index", index, 0);
  op.headerName(name);
  op.headerValue(value);
  op.headerFits(name, value, true);
  op.write(
    session,
    { kind: "insheader", index, a: name, b: value },
    () => op.libmilter.smfi_insheader(session.ptr, index, name, value),
    why,
  );
}

/**
 * `chgfrom(ctx, from, args)` changes the envelope sender to `from`, with
 * optional ESMTP arguments. Only from `eom`, with `Flag.CHGFROM`. Wraps
 * `smfi_chgfrom`.
 *
 * @throws {MilterError} outside eom, without the flag, or when libmilter fails.
 */
export function chgfrom(ctx: Ctx, from: string, args?: string | null): void {
  const op = CHGFROM;
  const [session, why] = op.inEom(ctx, "CHGFROM");
  op.nonEmpty("the sender", from);
  const a = op.optionalString("args", args);
  op.write(session, { kind: "chgfrom", a: from, b: a }, () => op.libmilter.smfi_chgfrom(session.ptr, from, a), why);
}

/**
 * Adds a recipient to the message's envelope. Only from `eom`, with
 * `Flag.ADDRCPT`. Wraps `smfi_addrcpt`.
 *
 * @throws {MilterError} outside eom, without the flag, or when libmilter fails.
 */
export function addrcpt(ctx: Ctx, rcpt: string): void {
  const op = ADDRCPT;
  const [session, why] = op.inEom(ctx, "ADDRCPT");
  op.nonEmpty("the recipient", rcpt);
  op.write(session, { kind: "addrcpt", a: rcpt }, () => op.libmilter.smfi_addrcpt(session.ptr, rcpt), why);
}

/**
 * Adds a recipient with optional ESMTP arguments. Only from `eom`, with
 * `Flag.ADDRCPT_PAR`. Wraps `smfi_addrcpt_par`.
 *
 * @throws {MilterError} outside eom, without the flag, or when libmilter fails.
 */
export function addrcpt_par(ctx: Ctx, rcpt: string, args?: string | null): void {
  const op = ADDRCPT_PAR;
  const [session, why] = op.inEom(ctx, "ADDRCPT_PAR");
  op.nonEmpty("the recipient", rcpt);
  const a = op.optionalString("args", args);
  op.write(
    session,
    { kind: "addrcpt_par", a: rcpt, b: a },
    () => op.libmilter.smfi_addrcpt_par(session.ptr, rcpt, a),
    why,
  );
}

/**
 * Removes a recipient (as given at RCPT TO) from the envelope. Only from
 * `eom`, with `Flag.DELRCPT`. Wraps `smfi_delrcpt`.
 *
 * @throws {MilterError} outside eom, without the flag, or when libmilter fails.
 */
export function delrcpt(ctx: Ctx, rcpt: string): void {
  const op = DELRCPT;
  const [session, why] = op.inEom(ctx, "DELRCPT");
  op.nonEmpty("the recipient", rcpt);
  op.write(session, { kind: "delrcpt", a: rcpt }, () => op.libmilter.smfi_delrcpt(session.ptr, rcpt), why);
}

/**
 * Replaces the message body; calling it again appends to the new body.
 * Strings are sent as UTF-8. Only from `eom`, with `Flag.CHGBODY`. Wraps
 * `smfi_replacebody`.
 *
 * @throws {MilterError} outside eom, without the flag, or when libmilter fails.
 */
export function replacebody(ctx: Ctx, body: Uint8Array | string): void {
  const op = REPLACEBODY;
  const [session, why] = op.inEom(ctx, "CHGBODY");
  const bytes = typeof body === "string"
    ? new TextEncoder().encode(body)
    : body instanceof Uint8Array
    ? body
    : op.fail(`the body must be a Uint8Array or a string, got ${describe(body)}`);
  if (bytes.length > 0x7fffffff) op.fail("the body is larger than 2 GiB");
  op.write(
    session,
    { kind: "replacebody", bytes },
    () => op.libmilter.smfi_replacebody(session.ptr, bytes, bytes.length),
    why,
  );
}

/**
 * Tells the MTA the filter is still working, resetting its timeouts. Only
 * from `eom`. Wraps `smfi_progress`.
 *
 * @throws {MilterError} outside eom, or when libmilter fails.
 */
export function progress(ctx: Ctx): void {
  const session = PROGRESS.inCallback(ctx, ["eom"]);
  PROGRESS.write(session, { kind: "progress" }, () => PROGRESS.libmilter.smfi_progress(session.ptr));
}

/**
 * Quarantines the message (Postfix: puts it on hold) with the given reason.
 * Only from `eom`, with `Flag.QUARANTINE`. Wraps `smfi_quarantine`.
 *
 * @throws {MilterError} outside eom, without the flag, or when libmilter fails.
 */
export function quarantine(ctx: Ctx, reason: string): void {
  const op = QUARANTINE;
  const [session, why] = op.inEom(ctx, "QUARANTINE");
  op.string("the reason", reason);
  if (reason === "") op.fail("the reason must not be empty");
  op.write(session, { kind: "quarantine", a: reason }, () => op.libmilter.smfi_quarantine(session.ptr, reason), why);
  session.quarantine(reason);
}

/**
 * `setsymlist(ctx, stage, macros)` asks the MTA to send the macros named in
 * `macros` (space-separated, e.g. `"{client_addr} i"`) at `stage`. Only from
 * `negotiate`, with `Flag.SETSYMLIST` among the flags it returns; once per
 * stage. Wraps `smfi_setsymlist`.
 *
 * @throws {MilterError} outside negotiate, for an unknown stage, or when libmilter refuses.
 */
export function setsymlist(ctx: Ctx, stage: Stage, macros: string): void {
  const op = SETSYMLIST;
  const session = op.inCallback(ctx, ["negotiate"]);
  if (!isStage(stage)) op.fail(`expected a Stage, got ${describe(stage)}`);
  op.string("the macro list", macros);
  op.check(
    op.libmilter.smfi_setsymlist(session.ptr, STAGE_CODES[stage], macros),
    () => `libmilter refused (a list for ${stage} was already set in this negotiation, or the list is empty)`,
  );
}

/**
 * The raw bytes of the running callback's string arguments, for a filter
 * that must see exactly what the MTA sent (header values and addresses need
 * not be UTF-8; the strings the callbacks receive show invalid sequences as
 * U+FFFD). In order: `connect` the host name; `helo` its argument; `envfrom`
 * and `envrcpt` the address, then each ESMTP argument; `header` the name and
 * the value; `unknown` the command. Empty in the other callbacks, and for a
 * host name libmilter did not give. Each is a copy. This function is an
 * extension: the OCaml module has no equivalent.
 *
 * @throws {MilterError} outside a callback of the context's connection.
 */
export function rawargs(ctx: Ctx): Uint8Array[] {
  const session = RAWARGS.session(ctx);
  const { libc } = native(RAWARGS.name);
  return (session.invocation?.raw ?? []).map((ptr) =>
    cStringBytes(libc, ptr) ?? RAWARGS.fail("this C library has no strlen reachable through libmilter")
  );
}
