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

import type { Libmilter } from "./load.ts";
import { functionAddress, openShim } from "./shim.ts";

/** libmilter's functions `int fn(void)` that block. */
export type BlockingSymbol = "smfi_main" | "smfi_stop";

/** Where {@linkcode runBlocking} runs its function. */
export type BlockingThread =
  | { readonly kind: "shim"; readonly path: string }
  | { readonly kind: "worker"; readonly reason: string };

/** Where blocking calls run in this process: on the shim's thread, or on koffi's worker and why. */
export function blockingThread(lib: Libmilter): BlockingThread {
  const shim = openShim();
  if (!("startMain" in shim)) return { kind: "worker", reason: shim.reason };
  if (functionAddress(lib.path, "smfi_main") === null) {
    return { kind: "worker", reason: `the address of smfi_main in ${lib.path} is out of reach (no dlsym)` };
  }
  return { kind: "shim", path: shim.path };
}

/**
 * Calls `symbol()` off the JS thread and settles with its return value. The
 * process stays alive until it has returned.
 *
 * @throws {Error} (as a rejection) when no thread could be started for it.
 */
export function runBlocking(lib: Libmilter, symbol: BlockingSymbol): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const shim = openShim();
    const address = "startMain" in shim ? functionAddress(lib.path, symbol) : null;
    try {
      if ("startMain" in shim && address !== null) shim.startMain(address, resolve);
      else lib.onWorker(symbol).then(resolve, reject);
    } catch (error) {
      reject(error);
    }
  });
}
