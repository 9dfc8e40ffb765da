/**
 * Finding and opening the system libmilter with koffi, and binding every
 * symbol of `ffi/symbols.ts`. Nothing here runs at import time: the facade
 * calls {@linkcode openLibmilter} on first use.
 *
 * @module
 */

import koffi, { type LibraryHandle, type TypeObject } from "koffi";
import {
  CALLBACK_PROTOTYPES,
  type CallbackSymbol,
  FUNCTION_PROTOTYPES,
  type FunctionSymbol,
  INTERNAL_PROTOTYPES,
  type InternalSymbol,
  LIBC_PROTOTYPES,
  type LibcSymbol,
} from "./symbols.ts";

/** A bound C function: call it synchronously, or through `.async` on a worker thread. */
export interface NativeFunction {
  // deno-lint-ignore no-explicit-any
  (...args: any[]): any;
  // deno-lint-ignore no-explicit-any
  async(...args: any[]): void;
}

/** The opened library: its path, every bound symbol and the callback types. */
export interface Libmilter {
  /** The file name or path that loaded. */
  readonly path: string;
  readonly fn: Readonly<Record<FunctionSymbol, NativeFunction>>;
  /** libmilter internals, each `null` where this build does not export it. */
  readonly internal: Readonly<Record<InternalSymbol, NativeFunction | null>>;
  /** libc helpers, each `null` where the C library lacks it (e.g. dlopen before glibc 2.34). */
  readonly libc: Readonly<Record<LibcSymbol, NativeFunction | null>>;
  /** Pointer types of the xxfi_* prototypes, for `koffi.register`. */
  readonly callbackTypes: Readonly<Record<CallbackSymbol, TypeObject>>;
  /** koffi's bound on callbacks relayed from foreign threads at one time. */
  readonly maxAsyncCalls: number;
}

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

let typesDeclared: { callbacks: Record<CallbackSymbol, TypeObject> } | undefined;

function declareTypes(): { callbacks: Record<CallbackSymbol, TypeObject> } {
  if (typesDeclared) return typesDeclared;
  koffi.opaque("SMFICTX");
  koffi.struct("rlimit", { rlim_cur: "unsigned long", rlim_max: "unsigned long" });
  const callbacks = {} as Record<CallbackSymbol, TypeObject>;
  const fields: Record<string, TypeObject | string> = {
    xxfi_name: "const char *",
    xxfi_version: "int",
    xxfi_flags: "unsigned long",
  };
  for (const [name, proto] of Object.entries(CALLBACK_PROTOTYPES) as [CallbackSymbol, string][]) {
    callbacks[name] = koffi.pointer(koffi.proto(proto));
    fields[name] = callbacks[name];
  }
  koffi.struct("smfiDesc", fields);
  typesDeclared = { callbacks };
  return typesDeclared;
}

const RTLD_NOW = 0x2;
const RTLD_NODELETE = 0x1000; // glibc, musl and FreeBSD agree

/**
 * Makes the library impossible to unload. libmilter's worker threads sleep
 * inside its code for the life of the process; a runtime that finalizes
 * koffi's library handle at exit (Deno does) would otherwise unmap that code
 * under them and crash the process on its way out.
 */
function pin(libc: Record<LibcSymbol, NativeFunction | null>, name: string): void {
  libc.dlopen?.(name, RTLD_NOW | RTLD_NODELETE);
}

function bind<K extends string>(lib: LibraryHandle, table: Record<K, string>): Record<K, NativeFunction> {
  const out = {} as Record<K, NativeFunction>;
  for (const [name, proto] of Object.entries(table) as [K, string][]) out[name] = lib.func(proto) as NativeFunction;
  return out;
}

function bindOptional<K extends string>(
  lib: LibraryHandle,
  table: Record<K, string>,
): Record<K, NativeFunction | null> {
  const out = {} as Record<K, NativeFunction | null>;
  for (const [name, proto] of Object.entries(table) as [K, string][]) {
    try {
      out[name] = lib.func(proto) as NativeFunction;
    } catch {
      out[name] = null;
    }
  }
  return out;
}

/**
 * Opens libmilter: the file named by `envPath` when given, otherwise the
 * first of {@linkcode LIBRARY_CANDIDATES} that loads.
 *
 * @throws {LoadFailure} listing every name tried and why it failed.
 */
export function openLibmilter(envPath: string | undefined): Libmilter {
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
      const types = declareTypes();
      const libc = bindOptional(lib, LIBC_PROTOTYPES);
      pin(libc, name);
      return {
        path: name,
        fn: bind(lib, FUNCTION_PROTOTYPES),
        internal: bindOptional(lib, INTERNAL_PROTOTYPES),
        libc,
        callbackTypes: types.callbacks,
        maxAsyncCalls,
      };
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
