/**
 * The connection ceiling: `maxConnections`, and without the native shim the
 * bound that keeps koffi's relay pool from overflowing.
 *
 * Through the shim, only the shim's own thread enters koffi's relay (the
 * bell), however many connections wait. Without it, each libmilter thread
 * that calls into JS holds one of koffi's `max_async_calls` slots until JS
 * answers; a thread that finds the pool full makes koffi throw on a non-JS
 * thread, which kills the process. A thread can only call back for a
 * connection it serves, and every connection holds a file descriptor, so
 * while `main` runs the binding lowers the soft `RLIMIT_NOFILE` below the
 * pool size (and below what `maxConnections` needs): past it, libmilter's
 * `accept()` fails with EMFILE, the connection waits in the listen backlog
 * (libmilter retries after 1 s, 2 s, …), and the MTA applies its own
 * timeout and `milter_default_action` (tempfail by default). Never a crash,
 * never an unfiltered accept.
 *
 * @module
 */

import { countOpenFds, type FileLimit, fileLimit, setFileLimit } from "../ffi/libc.ts";
import type { Libmilter } from "../ffi/load.ts";

export type { FileLimit };

/** koffi async calls the binding itself may hold: smfi_main, smfi_stop, and a margin. */
export const RESERVED_ASYNC_CALLS = 8;
/**
 * Descriptors libmilter opens inside smfi_main: its worker pool's pipe. (The
 * listening socket is already open: main creates it before applying the limit.)
 */
const LIBMILTER_OWN_FDS = 2;

/** The most descriptors while koffi relays every callback: below its pool of `maxAsyncCalls`. */
export function relayCeiling(maxAsyncCalls: number): number {
  return Math.max(maxAsyncCalls - RESERVED_ASYNC_CALLS, 16);
}

/**
 * The soft file limit that bounds connections. It always stays at or below
 * `ceiling` and the hard limit (descriptors already open only lower the
 * number of connections further). With `maxConnections`, it leaves that
 * many descriptors free above those open below it now and those libmilter
 * will open; descriptors the program opens or closes later move the bound
 * by as many. `openBelow(n)` counts the open descriptors numbered below `n`.
 * Pure, for tests.
 */
export function connectionFileLimit(
  ceiling: number,
  hard: number,
  maxConnections: number | undefined,
  ownFds: number,
  openBelow: (n: number) => number,
): number {
  const soft = Math.min(ceiling, hard);
  if (maxConnections === undefined) return soft;
  // Descriptors numbered at or above the limit take no slot below it, so
  // shrink until the count of those below is stable.
  for (let candidate = soft;;) {
    const next = Math.min(soft, openBelow(candidate) + ownFds + maxConnections);
    if (next >= candidate) return candidate;
    candidate = next;
  }
}

/**
 * Applies the connection ceiling; returns the previous limit to restore, or
 * `null` when the platform's RLIMIT_NOFILE is unknown or the call failed.
 */
export function applyConnectionLimit(lib: Libmilter, maxConnections: number | undefined): FileLimit | null {
  const previous = fileLimit(lib.libc);
  if (previous === null || countOpenFds(lib.libc, 0) === null) return null;
  // Through the shim koffi's pool bounds nothing: the limit stays, unless maxConnections lowers it.
  const ceiling = lib.relay.withoutShim === null ? previous.soft : relayCeiling(lib.maxAsyncCalls);
  const soft = connectionFileLimit(
    ceiling,
    previous.hard,
    maxConnections,
    LIBMILTER_OWN_FDS,
    (n) => countOpenFds(lib.libc, n)!,
  );
  return setFileLimit(lib.libc, { soft, hard: previous.hard }) ? previous : null;
}

/** Puts back the limit {@linkcode applyConnectionLimit} replaced. */
export function restoreFileLimit(lib: Libmilter, previous: FileLimit | null): void {
  if (previous !== null) setFileLimit(lib.libc, previous);
}
