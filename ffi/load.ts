/**
 * Finding and opening the system libmilter with koffi, and binding every
 * symbol of `ffi/symbols.ts`. Nothing here runs at import time: the facade
 * calls {@linkcode openLibmilter} on first use.
 *
 * @module
 */

import koffi, { type LibraryHandle, type TypeObject } from "koffi";
import type { Libc } from "./libc.ts";
import { type BlockingCalls, blockingCalls } from "./thread.ts";
import { functionAddress, pinLibrary } from "./dl.ts";
import {
  type Generation,
  openShim,
  PENDING,
  type PipelinedSymbol,
  type PipelineStats,
  type QueuedCall,
  type QueuedSymbol,
  type Shim,
  type ShimWrite,
  type TakenCall,
  WRITE_FUNCTIONS,
  WRITE_KINDS,
} from "./shim.ts";
import {
  bindAll,
  CALLBACK_PROTOTYPES,
  type CallbackHandler,
  type CallbackHandlers,
  type CallbackSymbol,
  type Declared,
  declaredArity,
  FUNCTION_PROTOTYPES,
  INTERNAL_PROTOTYPES,
  LIBC_PROTOTYPES,
  OPTIONAL_PROTOTYPES,
  type OptionalSymbol,
  type Pointer,
  type Signatures,
} from "./symbols.ts";

/** The `smfi_*` functions, typed by their declarations in `ffi/symbols.ts`. */
export type LibmilterFunctions =
  & Signatures<typeof FUNCTION_PROTOTYPES>
  & Signatures<typeof OPTIONAL_PROTOTYPES>;

/**
 * The opened library. Its functions are typed by their C declarations; an
 * optional one this build lacks calls the `missing` hook given to
 * {@linkcode openLibmilter} instead.
 */
export interface Libmilter {
  /** The file name or path that loaded. */
  readonly path: string;
  readonly functions: Readonly<LibmilterFunctions>;
  /** Whether this build has the optional function `symbol`. */
  has(symbol: OptionalSymbol): boolean;
  /** libc helpers, each `null` where the C library lacks it; see `ffi/libc.ts`. */
  readonly libc: Libc;
  /** koffi's bound on callbacks relayed from foreign threads at one time. */
  readonly maxAsyncCalls: number;
  /** The runtime version of libmilter (`smfi_version`), or `null` when it fails. */
  version(): [number, number, number] | null;
  /** `smfi_setmaxdatasize`: sets the largest command and returns the previous one. */
  setmaxdatasize(size: number): number;
  /** Whether libmilter is stopping (`mi_stop() != 0`), or `null` where this build does not export it. */
  stopping(): boolean | null;
  /**
   * Registers the handlers as C function pointers for `smfi_register`, one
   * per callback (`null` where there is no handler). Where the native shim is
   * available ({@linkcode Libmilter.relay}), libmilter gets the shim's wrappers,
   * which queue each call for the bell: the relay's {@linkcode Relay.take}
   * then gives it, with a token, for the caller to run its handler and
   * answer; otherwise the handlers themselves, with the token `-1`. The registrations
   * live as long as the process: libmilter keeps the pointers. The first call
   * registers; later ones return the same pointers (the shim wraps one set of
   * handlers per process), so give every handler the first time.
   */
  registerCallbacks(handlers: CallbackHandlers): Record<CallbackSymbol, Pointer | null>;
  /**
   * Registers one handler directly (token `-1`), without the shim: for
   * `bench/profile.ts`, which calls the pointer itself.
   */
  registerCallback<K extends CallbackSymbol>(symbol: K, handler: CallbackHandler<K>): Pointer;
  /**
   * How answers, writes and queued calls pass between the JS thread and
   * libmilter's threads: through the native shim, or, where no shim object
   * fits the platform, directly (writes on the JS thread; no answer given
   * later; no pipeline). Chosen once, when the library loads.
   */
  readonly relay: Relay;
  /** libmilter's blocking functions (`smfi_main`, `smfi_stop`), run off the JS thread; see `ffi/thread.ts`. */
  readonly blocking: BlockingCalls;
}

/**
 * The one interface the facade answers, writes and pipelines through
 * ({@linkcode Libmilter.relay}); what it does without the shim is said per
 * member.
 */
export interface Relay {
  /** `null` through the shim; otherwise why there is none: the platform, and the command that builds the shim. */
  readonly withoutShim: string | null;
  /**
   * What a handler returns to answer later, through {@linkcode reply}
   * (`Shim.pendingCode`); never a libmilter status.
   */
  readonly pendingCode: number;
  /**
   * Why the call `token` names cannot be answered later, `null` when it can
   * (through the shim, a call its wrapper made). Ask before returning
   * {@linkcode pendingCode}.
   */
  cannotWait(token: number): string | null;
  /** Answers the call `token` names: a {@linkcode RelayedCall}, at once or after {@linkcode later}. */
  reply(token: number, code: number): void;
  /** Marks the call `token` names as answered later (its handler returned {@linkcode pendingCode}). */
  later(token: number): void;
  /**
   * Gives the relay libmilter's write functions (`Shim.bindWrites`): a write
   * then runs on its connection's own thread. When one fails, the reply is
   * set to `451 4.3.0 <failureText>`, the call answers Tempfail, and
   * `onFailure` runs (on the JS thread, while libmilter's thread still waits)
   * with the connection's context and the write. Once per process; nothing
   * without the shim.
   */
  bindWrites(failureText: string, onFailure: (ctx: Pointer, write: ShimWrite["kind"]) => void): void;
  /**
   * Sends `write` for the call `token` names: posted to its connection's
   * thread through the shim (0 when posted, `null` when that call takes no
   * more writes), otherwise `direct()` runs here and its status is returned.
   */
  write(token: number, write: ShimWrite, direct: () => number): number | null;
  /**
   * Starts the bell and the pipeline (`Shim.bindPipeline`), with libmilter's
   * `smfi_getsymval` to capture `macros` for each queued call; `bell` runs
   * on the JS thread while calls wait for JS (every call through the shim
   * does); the callbacks `always` names are queued for every connection.
   *
   * @returns the macros captured (`macros`, or none where `smfi_getsymval`
   *   cannot be reached); `null`, doing nothing, without the shim.
   * @throws {Error} when the shim cannot start its thread.
   */
  startPipeline(
    bell: () => void,
    boundBytes: number,
    macros: readonly string[],
    always: readonly QueuedSymbol[],
  ): readonly string[] | null;
  /** Pipelines `callbacks` of the connection at `ctx` from now on (`Shim.pipeline`); nothing without the shim. */
  pipeline(ctx: Pointer, callbacks: readonly PipelinedSymbol[]): void;
  /** The calls waiting for JS, oldest first (`Shim.take`); none without the shim. */
  take(): TakenCall[];
  /** Ends queued calls {@linkcode take} gave (`Shim.done`). */
  done(calls: readonly QueuedCall[]): void;
  /** The value `macros[index]` of {@linkcode startPipeline} had for a queued call, `null` if unsent. */
  symval(call: QueuedCall, index: number): string | null;
  /** The pipeline's figures, `null` without the shim. */
  pipelineStats(): PipelineStats | null;
  /**
   * Has negotiation answered without a round trip to JS, as libmilter does
   * without a negotiate callback (`Shim.negotiateItself`): the action
   * `flags`, the NO* steps of absent callbacks. Once, before `smfi_main`.
   *
   * @returns whether it will be: `false` without the shim, or where
   *   `smfi_setpriv` cannot be reached (JS then answers negotiate).
   */
  negotiateItself(flags: number): boolean;
  /**
   * Installs `generation` for the connections that start from now on
   * (`Shim.generation`), after {@linkcode negotiateItself}.
   *
   * @returns `false` without the shim, or where the shim refuses.
   */
  publish(generation: Generation): boolean;
  /** Stamps the connection at `ctx` with the generation `id` (`Shim.stamp`), from its negotiate; nothing without the shim. */
  stamp(ctx: Pointer, id: number): void;
  /** Whether the shim still holds the generation `id` (`Shim.live`); `false` without the shim. */
  live(id: number): boolean;
  /** How many times libmilter called each callback's wrapper, in `struct smfiDesc` order; `null` without the shim. */
  wrapperCalls(): number[] | null;
  /** Refuses new connections at negotiate from now on, where {@linkcode negotiateItself} answers it. */
  refuseNew(): void;
  /** Connections admitted at a negotiate JS did not see, not yet closed once: 0 where JS sees every negotiate. */
  admitted(): number;
}

/** Called for an optional function this build lacks, in place of it; throws. */
export type MissingHook = (symbol: OptionalSymbol, path: string) => never;

/** Environment variable naming the library file to load instead of searching. */
export const LIBMILTER_PATH_ENV = "LIBMILTER_PATH";

/**
 * The names tried in order when `LIBMILTER_PATH` is unset: Debian/Ubuntu's
 * soname first, then Fedora/RHEL, Alpine, FreeBSD ports and the development
 * symlink.
 */
export const LIBRARY_CANDIDATES: readonly string[] = [
  "libmilter.so.1.0.1", // Debian, Ubuntu (libmilter1.0.1)
  "libmilter.so.1.0.2", // Fedora, RHEL (sendmail-milter)
  "libmilter.so.1.0", // Alpine (libmilter), older Fedora/RHEL
  "libmilter.so.1",
  "/usr/local/lib/libmilter.so.6", // FreeBSD ports (mail/libmilter)
  "libmilter.so.6",
  "libmilter.so", // any distribution's -dev package
];

/** Which package provides the library on each family of systems. */
export const INSTALL_HINTS: readonly string[] = [
  "Debian/Ubuntu: apt-get install libmilter1.0.1",
  "Fedora/RHEL: dnf install sendmail-milter",
  "Alpine: apk add libmilter",
  "FreeBSD: pkg install libmilter",
];

/** One failed attempt to open a candidate. */
export interface LoadAttempt {
  readonly name: string;
  readonly error: string;
}

/** Thrown by {@linkcode openLibmilter} when no candidate loads. */
export class LoadFailure extends Error {
  override name = "LoadFailure";
  constructor(readonly attempts: readonly LoadAttempt[], readonly fromEnv: boolean) {
    super(attempts.map((a) => `${a.name}: ${a.error}`).join("; "));
  }
}

/** koffi's default `max_async_calls`, and the most it allows. */
const KOFFI_DEFAULT_ASYNC_CALLS = 256;
const KOFFI_MAX_ASYNC_CALLS = 4096;
/**
 * koffi's most resident relay pools (default 8). A relayed call past them
 * maps a fresh stack and heap for its duration; `smfi_main` holds one pool
 * for good, so 8 meant an mmap per callback from 8 concurrent connections on.
 */
const KOFFI_MAX_RESIDENT_POOLS = 32;

/**
 * Raises koffi's pool of relayed calls, and its resident pools, to their
 * maxima. This only works before koffi loads its first library in the
 * process; afterwards, or when the program chose its own value, the current
 * setting is kept.
 */
function configureKoffi(): number {
  const current = koffi.config().max_async_calls as number;
  if (current !== KOFFI_DEFAULT_ASYNC_CALLS) return current;
  try {
    koffi.config({ max_async_calls: KOFFI_MAX_ASYNC_CALLS, resident_async_pools: KOFFI_MAX_RESIDENT_POOLS });
    return KOFFI_MAX_ASYNC_CALLS;
  } catch {
    return current; // a library was already loaded through koffi
  }
}

/** The function pointer types of the callbacks, as libmilter calls them. */
type CallbackTypes = Record<CallbackSymbol, TypeObject>;

let typesDeclared: CallbackTypes | undefined;

/** Declares the types the prototypes name, once per process; returns the callback pointer types. */
function declareTypes(): CallbackTypes {
  if (typesDeclared) return typesDeclared;
  koffi.opaque("SMFICTX");
  koffi.struct("rlimit", { rlim_cur: "unsigned long", rlim_max: "unsigned long" });
  const callbacks = {} as Record<CallbackSymbol, TypeObject>;
  const fields: Record<string, TypeObject | string> = {
    xxfi_name: "const char *",
    xxfi_version: "int",
    xxfi_flags: "unsigned long",
  };
  for (const [name, declared] of Object.entries(CALLBACK_PROTOTYPES) as [CallbackSymbol, Declared<unknown>][]) {
    callbacks[name] = koffi.pointer(koffi.proto(declared.c));
    fields[name] = callbacks[name];
  }
  koffi.struct("smfiDesc", fields);
  typesDeclared = callbacks;
  return typesDeclared;
}

/** A koffi binding as this module calls it: any arguments, and `.async` for the worker. */
interface Bound {
  // deno-lint-ignore no-explicit-any
  (...args: any[]): any;
  // deno-lint-ignore no-explicit-any
  async(...args: any[]): void;
}

/** Binds every declaration of `table` that the library has; `null` for the others. */
function bindOptional<T extends Record<string, Declared<unknown>>>(
  lib: LibraryHandle,
  table: T,
): { [K in keyof T]: Signatures<T>[K] | null } {
  const out: Record<string, unknown> = {};
  for (const [name, declared] of Object.entries(table)) {
    try {
      out[name] = lib.func(declared.c);
    } catch {
      out[name] = null;
    }
  }
  return out as { [K in keyof T]: Signatures<T>[K] | null };
}

/**
 * The function koffi registers for `handler` without the shim, called with
 * libmilter's arguments: fixed-arity functions, as this runs for every
 * callback; `-1` is passed for the token. body's `size_t` and negotiate's
 * `unsigned long`s are made Numbers whatever koffi gives.
 */
function adapt<K extends CallbackSymbol>(symbol: K, handler: CallbackHandler<K>): unknown {
  // deno-lint-ignore no-explicit-any
  const h = handler as (...args: any[]) => number;
  if (symbol === "xxfi_body") {
    return (c: Pointer, p: Pointer | null, len: number | bigint) => h(c, p, Number(len), -1);
  }
  if (symbol === "xxfi_negotiate") {
    type W = number | bigint;
    return (c: Pointer, f0: W, f1: W, f2: W, f3: W, p0: Pointer, p1: Pointer, p2: Pointer, p3: Pointer) =>
      h(c, Number(f0), Number(f1), Number(f2), Number(f3), p0, p1, p2, p3, -1);
  }
  switch (declaredArity(CALLBACK_PROTOTYPES[symbol].c)) {
    case 1:
      return (a: unknown) => h(a, -1);
    case 2:
      return (a: unknown, b: unknown) => h(a, b, -1);
    default:
      return (a: unknown, b: unknown, c: unknown) => h(a, b, c, -1);
  }
}

/** The write kinds by their `OP_*` number. */
const WRITE_NAMES = Object.fromEntries(Object.entries(WRITE_KINDS).map(([name, kind]) => [kind, name])) as Record<
  number,
  ShimWrite["kind"]
>;

/** The {@linkcode Relay} through `shim`, for the library loaded from `path`. */
function shimRelay(shim: Shim, path: string): Relay {
  return {
    withoutShim: null,
    pendingCode: shim.pendingCode,
    cannotWait: (token) => token < 0 ? "this callback was registered without the native shim" : null,
    reply: (token, code) => void shim.reply(token, code),
    later: (token) => shim.later(token),
    bindWrites: (failureText, onFailure) =>
      shim.bindWrites(
        WRITE_FUNCTIONS.map((name) => functionAddress(path, name)),
        failureText,
        (ctx, kind) => onFailure(ctx, WRITE_NAMES[kind]),
      ),
    write: (token, write, direct) => token < 0 ? direct() : shim.post(token, write) ? 0 : null,
    startPipeline: (bell, boundBytes, macros, always) => {
      // Without smfi_getsymval's address nothing can be captured.
      const getsymval = functionAddress(path, "smfi_getsymval");
      const captured = getsymval === null ? [] : macros;
      shim.bindPipeline(bell, boundBytes, getsymval, captured, always);
      return captured;
    },
    pipeline: (ctx, callbacks) => void shim.pipeline(ctx, callbacks),
    take: () => shim.take(),
    done: (calls) => shim.done(calls),
    symval: (call, index) => shim.symval(call, index),
    pipelineStats: () => shim.pipelineStats(),
    negotiateItself: (flags) => {
      const setpriv = functionAddress(path, "smfi_setpriv");
      const getpriv = functionAddress(path, "smfi_getpriv");
      if (setpriv === null || getpriv === null) return false;
      shim.negotiateItself(flags, setpriv, getpriv);
      return true;
    },
    publish: (generation) => shim.generation(generation),
    stamp: (ctx, id) => void shim.stamp(ctx, id),
    live: (id) => shim.live(id),
    wrapperCalls: () => shim.wrapperCalls(),
    refuseNew: () => shim.refuseNew(),
    admitted: () => shim.admitted(),
  };
}

/** The {@linkcode Relay} where there is no shim (`reason` says why): everything on the JS thread. */
function directRelay(reason: string): Relay {
  const none = (): never => {
    throw new Error(`no native shim: ${reason}`);
  };
  return {
    withoutShim: reason,
    pendingCode: PENDING,
    cannotWait: () => reason,
    reply: none,
    later: none,
    bindWrites: () => {},
    write: (_token, _write, direct) => direct(),
    startPipeline: () => null,
    pipeline: () => {},
    take: () => [],
    done: () => {},
    symval: none,
    pipelineStats: () => null,
    negotiateItself: () => false,
    publish: () => false,
    stamp: () => {},
    live: () => false,
    wrapperCalls: () => null,
    refuseNew: () => {},
    admitted: () => 0,
  };
}

/**
 * {@linkcode Libmilter.registerCallbacks}: the shim's wrappers where there is
 * a shim (the handlers then run from the bell, see `src/pipeline.ts`),
 * otherwise each handler registered with koffi.
 */
function registerAll(
  handlers: CallbackHandlers,
  types: CallbackTypes,
  shim: Shim | null,
): Record<CallbackSymbol, Pointer | null> {
  const symbols = Object.keys(CALLBACK_PROTOTYPES) as CallbackSymbol[];
  const pointers = shim
    ? shim.wrap(symbols) // every wrapper: each connection's generation says which reach JS
    : symbols.map((symbol) => {
      const handler = handlers[symbol] as CallbackHandler<CallbackSymbol> | undefined;
      if (!handler) return null;
      return koffi.register(adapt(symbol, handler) as (...args: unknown[]) => unknown, types[symbol]) as Pointer;
    });
  return Object.fromEntries(symbols.map((symbol, i) => [symbol, pointers[i]])) as Record<
    CallbackSymbol,
    Pointer | null
  >;
}

/** What {@linkcode openLibmilter} needs beside the library's path: what the environment says, and the missing hook. */
export interface LoadFrom {
  /** Called for an optional function the library lacks. */
  readonly missing: MissingHook;
  /** A shim object to load instead of the prebuilt one (`MILTER_SHIM_PATH`). */
  readonly shimPath: string | undefined;
}

/** The {@linkcode Libmilter} of an opened library. */
function libmilter(lib: LibraryHandle, path: string, from: LoadFrom, maxAsyncCalls: number): Libmilter {
  const { missing, shimPath } = from;
  const callbackTypes = declareTypes();
  const opened = openShim(shimPath);
  const shim = "reason" in opened ? null : opened;
  const shimReason = "reason" in opened ? opened.reason : null;
  let registeredAll: Record<CallbackSymbol, Pointer | null> | undefined;
  const libc = bindOptional(lib, LIBC_PROTOTYPES);
  // libmilter's worker threads sleep inside its code for the life of the process: never unloaded.
  pinLibrary(path);
  const required = bindAll(lib, FUNCTION_PROTOTYPES);
  /** A blocking `int fn(void)` on koffi's worker thread, a thread of the runtime's pool. */
  const onWorker = (symbol: "smfi_main" | "smfi_stop"): Promise<number> =>
    new Promise<number>((resolve, reject) =>
      (required[symbol] as unknown as Bound).async((error: unknown, rc: number) => error ? reject(error) : resolve(rc))
    );
  const optional = bindOptional(lib, OPTIONAL_PROTOTYPES);
  const internal = bindOptional(lib, INTERNAL_PROTOTYPES);
  const fn = { ...required } as Record<string, unknown>;
  for (const [name, bound] of Object.entries(optional) as [OptionalSymbol, unknown][]) {
    fn[name] = bound ?? (() => missing(name, path));
  }
  const functions = fn as unknown as LibmilterFunctions;
  return {
    path,
    functions,
    has: (symbol) => optional[symbol] !== null,
    libc,
    maxAsyncCalls,
    version(): [number, number, number] | null {
      const out: [number[], number[], number[]] = [[0], [0], [0]];
      return functions.smfi_version(...out) === 0 ? [out[0][0], out[1][0], out[2][0]] : null;
    },
    setmaxdatasize: (size) => Number(functions.smfi_setmaxdatasize(size)),
    stopping: () => internal.mi_stop === null ? null : internal.mi_stop() !== 0,
    registerCallback: (symbol, handler) =>
      koffi.register(adapt(symbol, handler) as (...args: unknown[]) => unknown, callbackTypes[symbol]),
    registerCallbacks: (handlers) => registeredAll ??= registerAll(handlers, callbackTypes, shim),
    relay: shim === null ? directRelay(shimReason!) : shimRelay(shim, path),
    blocking: blockingCalls(path, opened, onWorker),
  };
}

/**
 * Opens libmilter: the file named by `envPath` when given, otherwise the
 * first of {@linkcode LIBRARY_CANDIDATES} that loads, and with it the native
 * shim (`from.shimPath`, else the prebuilt object; see `openShim`). A library
 * that lacks one of the optional functions still loads; calling that
 * function calls `from.missing` instead.
 *
 * @throws {LoadFailure} listing every name tried and why it failed.
 */
export function openLibmilter(envPath: string | undefined, from: LoadFrom): Libmilter {
  const maxAsyncCalls = configureKoffi();
  const names = envPath ? [envPath] : LIBRARY_CANDIDATES;
  const attempts: LoadAttempt[] = [];
  for (const name of names) {
    let lib: LibraryHandle;
    try {
      lib = koffi.load(name);
    } catch (error) {
      attempts.push({ name, error: error instanceof Error ? error.message : String(error) });
      continue;
    }
    try {
      return libmilter(lib, name, from, maxAsyncCalls);
    } catch (error) {
      lib.unload();
      attempts.push({
        name,
        error: `loaded, but is not a usable libmilter: ${error instanceof Error ? error.message : error}`,
      });
    }
  }
  throw new LoadFailure(attempts, envPath !== undefined && envPath !== "");
}
