/**
 * Running libmilter's blocking functions (`smfi_main`, `smfi_stop`) off the
 * JS thread. With the native shim (`ffi/shim.ts`) they run on a detached
 * thread of the shim's own, which no runtime joins at exit; without one, on
 * koffi's `.async` worker, a thread of the runtime's pool (under Node,
 * libuv's, which Node joins at exit: `process.exit()` then waits for as long
 * as `smfi_main` runs).
 *
 * @module
 */

import { functionAddress } from "./dl.ts";
import type { Listen, Shim } from "./shim.ts";

/** libmilter's functions `int fn(void)` that block. */
export type BlockingSymbol = "smfi_main" | "smfi_stop";

/** Where {@linkcode runBlocking} runs its function. */
export type BlockingThread =
  | { readonly kind: "shim"; readonly path: string }
  | { readonly kind: "worker"; readonly reason: string };

/** Runs libmilter's blocking functions off the JS thread. */
export interface BlockingCalls {
  /** Where they run in this process: on the shim's thread, or on koffi's worker and why. */
  readonly thread: BlockingThread;
  /**
   * Calls `symbol()` off the JS thread and settles with its return value.
   * The process stays alive until it has returned.
   *
   * @throws {Error} (as a rejection) when no thread could be started for it.
   */
  run(symbol: BlockingSymbol, listen?: Listen): Promise<number>;
  /**
   * For the runtime's exit handler while `smfi_main` runs: from now on no
   * libmilter thread calls into JS, and should one be inside such a call,
   * the process ends at once with `code` (see `Shim.exit`). Does nothing
   * without the shim.
   */
  onExit(code: number): void;
}

/**
 * The blocking calls of the library loaded from `path`: through `shim`
 * where there is one and the library's functions can be reached, otherwise
 * through `onWorker` (koffi's `.async`). Decided once, when the library loads.
 */
export function blockingCalls(
  path: string,
  shim: Shim | { readonly reason: string },
  onWorker: (symbol: BlockingSymbol) => Promise<number>,
): BlockingCalls {
  const addresses = "reason" in shim ? null : {
    smfi_main: functionAddress(path, "smfi_main"),
    smfi_stop: functionAddress(path, "smfi_stop"),
    mi_listener: functionAddress(path, "mi_listener"),
  };
  if ("reason" in shim || addresses === null || addresses.smfi_main === null || addresses.smfi_stop === null) {
    const reason = "reason" in shim
      ? shim.reason
      : `the addresses of smfi_main and smfi_stop in ${path} are out of reach (no dlsym)`;
    return { thread: { kind: "worker", reason }, run: onWorker, onExit: () => {} };
  }
  const { smfi_main, smfi_stop, mi_listener } = addresses;
  return {
    thread: { kind: "shim", path: shim.path },
    // smfi_main through runMilter: once it returns, no libmilter thread calls into JS. Where
    // libmilter's listener can be reached, it runs in smfi_main's place, without its signal thread.
    run: (symbol, listen) =>
      new Promise<number>((resolve) => {
        if (symbol === "smfi_stop") shim.startMain(smfi_stop, resolve);
        else if (listen !== undefined && mi_listener !== null) shim.runListener(mi_listener, listen, resolve);
        else shim.runMilter(smfi_main, resolve);
      }),
    onExit: (code) => shim.exit(code),
  };
}
