/**
 * The C trampolines that call the filter's callbacks: one handler per
 * `xxfi_*` callback, decoding its C arguments, and the runner of queued
 * (pipelined) calls.
 *
 * Every trampoline is total: whatever the JS callback does, libmilter gets a
 * valid answer. A callback that throws or returns something that is not a
 * valid answer is reported and answered `Tempfail` with the reply
 * `451 4.3.0`, never koffi's default of 0 (= SMFIS_CONTINUE, which would let
 * the mail through unfiltered).
 *
 * @module
 */

import { SMFIP_SKIP, SMFIS_CONTINUE, SMFIS_NOREPLY, SMFIS_TEMPFAIL } from "../ffi/constants.ts";
import {
  type Pointer,
  readBytes,
  readCString,
  readPointers,
  readULong,
  readUShort,
  writeULong,
} from "../ffi/memory.ts";
import type { QueuedCall, QueuedSymbol, RelayedCall } from "../ffi/shim.ts";
import { CALLBACK_SYMBOLS, type CallbackHandler, type CallbackHandlers, type CallbackSymbol } from "../ffi/symbols.ts";
import { silent, statCode } from "./answers.ts";
import { arrivingWith, dispatch } from "./calls.ts";
import { decodeSockAddr, type SockAddr, sockaddrLength, splitArgv } from "./convert.ts";
import { type Session, sessionAt } from "./ctx.ts";
import { isThenable } from "./error.ts";
import { reportInternal } from "./failure.ts";
import { logging, noteCall } from "./messages.ts";
import { absentSteps, answerNegotiate } from "./negotiation.ts";
import type { CallbackName } from "./stages.ts";
import { decodeMask, FLAG_BITS, STEP_BITS } from "./variants.ts";

/**
 * @internal The total trampoline libmilter calls for `symbol`, for
 * `bench/profile.ts` to time the binding's own work without a socket.
 */
export function trampoline<K extends CallbackSymbol>(symbol: K): CallbackHandler<K> {
  return guarded(symbol, TRAMPOLINES[symbol]);
}

/** The token of a call no libmilter thread waits for. */
const NO_TOKEN = -1;

/**
 * Runs one queued call through its stage's callback. A failure of the
 * binding itself is reported and answered at the next replying stage, as a
 * failed callback is: a pipelined message is never let through unfiltered.
 */
export function runQueued(call: QueuedCall): number {
  try {
    return arrivingWith(call.generation, () => QUEUED[call.symbol](call));
  } catch (error) {
    reportInternal(call.symbol, error);
    sessionAt(call.ctx)?.owe("message");
    return SMFIS_NOREPLY;
  }
}

/**
 * Runs one call libmilter's thread waits for (through the shim) through its
 * trampoline: its status, or the relay's pending code when it answers later.
 * Total, as every trampoline is.
 */
export function runRelayed(call: RelayedCall): number {
  const handler = TRAMPOLINE_HANDLERS[call.symbol] as (...args: readonly unknown[]) => number;
  return arrivingWith(call.generation, () => handler(...call.args));
}

/** How each queued callback runs from the shim's copy of its arguments. */
const QUEUED: { readonly [K in QueuedSymbol]: (call: QueuedCall) => number } = {
  xxfi_header: (call) => callStage("header", call.ctx, NO_TOKEN, () => strings(call.a, call.b), call),
  xxfi_eoh: (call) => callStage("eoh", call.ctx, NO_TOKEN, () => ({ args: [] }), call),
  xxfi_body: (call) => callStage("body", call.ctx, NO_TOKEN, () => chunk(call.bytes, call.len), call),
  xxfi_envrcpt: (call) => callStage("envrcpt", call.ctx, NO_TOKEN, () => ({ args: [] }), call),
  xxfi_eom: (call) => callStage("eom", call.ctx, NO_TOKEN, () => ({ args: [] }), call),
  xxfi_abort: (call) => callStage("abort", call.ctx, NO_TOKEN, () => ({ args: [] }), call),
  xxfi_close: (call) => callStage("close", call.ctx, NO_TOKEN, () => ({ args: [] }), call),
};

/** A callback's decoded arguments, and the C strings among them for `rawargs`. */
interface Decoded {
  readonly args: unknown[];
  readonly raw?: readonly Pointer[];
}

/**
 * The answer at a stage the connection's filter has no callback for, as
 * libmilter answers a NULL callback: Continue, sent as no reply where the
 * connection negotiated none. JS sees such calls for the binding's sake
 * (close, and abort and eom of a filter that negotiates: see `wanted` in
 * `filter.ts`), and from an MTA that sends a stage it was asked not to
 * (it lacks the NO* step), through the shim's wrappers.
 */
function withoutCallback(session: Session, callback: CallbackName): number {
  return silent(session, callback) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
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
    if (!fn) {
      if (logging()) noteCall(session, callback, decode().args);
      return withoutCallback(session, callback);
    }
    const { args, raw = [] } = decode();
    noteCall(session, callback, args);
    if (session.invocation !== null) session.invocation.raw = raw;
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
        // flags, and the NO* steps of absent callbacks the MTA offers
        // (libmilter pre-fills those of the callbacks registered as NULL).
        writeULong(pf0, r.flags);
        writeULong(pf1, ((readULong(pf1) | (absentSteps(r) & f1)) & ~SMFIP_SKIP) >>> 0);
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
export const TRAMPOLINE_HANDLERS: CallbackHandlers = Object.fromEntries(
  CALLBACK_SYMBOLS.map((symbol) => [symbol, trampoline(symbol)]),
);
