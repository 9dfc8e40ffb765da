/**
 * Lazy access to the loaded libmilter: the first facade call that needs C
 * opens it, so importing the module never fails on a machine without it.
 *
 * @module
 */

import { INSTALL_HINTS, type Libmilter, LIBMILTER_PATH_ENV, LoadFailure, openLibmilter } from "../ffi/load.ts";
import type { OptionalSymbol } from "../ffi/symbols.ts";
import { fail } from "./error.ts";
import { SHIM_PATH_ENV } from "../ffi/shim.ts";
import { env } from "./runtime.ts";

let loaded: Libmilter | undefined;

/** What calling an optional `smfi_*` function this libmilter build lacks raises. */
function missingFunction(symbol: OptionalSymbol, path: string): never {
  const name = symbol.replace(/^smfi_/, "").replace(/_fixed$/, "");
  fail(
    name,
    `${path} has no ${symbol.replace(/_fixed$/, "")} (an older or trimmed libmilter build); ` +
      `${name} cannot be used with it`,
  );
}

/**
 * Returns the opened libmilter, loading it on first use.
 *
 * @param fn the facade function asking, named in the error.
 * @throws {MilterError} when no library loads, naming what was tried and what to install.
 */
export function native(fn: string): Libmilter {
  if (loaded) return loaded;
  try {
    loaded = openLibmilter(env(LIBMILTER_PATH_ENV) || undefined, {
      missing: missingFunction,
      shimPath: env(SHIM_PATH_ENV),
    });
  } catch (error) {
    if (!(error instanceof LoadFailure)) throw error;
    const tried = error.attempts.map((a) => `  ${a.name}: ${a.error}`).join("\n");
    const where = error.fromEnv
      ? `${LIBMILTER_PATH_ENV} names a file that does not load`
      : "libmilter is not installed";
    fail(
      fn,
      `cannot load libmilter: ${where}.\nTried:\n${tried}\nInstall it with your system's package manager:\n` +
        INSTALL_HINTS.map((h) => `  ${h}`).join("\n") +
        `\nor set ${LIBMILTER_PATH_ENV} to the path of libmilter.so.`,
      { cause: error },
    );
  }
  return loaded;
}

/**
 * @internal Makes {@linkcode native} return `lib` instead of loading
 * libmilter: for in-process tests of the binding's callback logic against a
 * fake native side (`test/logic.test.ts`).
 */
export function useNative(lib: Libmilter): void {
  loaded = lib;
}
