/**
 * The process-wide state libmilter itself keeps implicitly: one filter per
 * process, one `smfi_main` per process.
 *
 * @module
 */

import type { SocketSpec } from "./convert.ts";

/**
 * - `idle`: `main` has not been called.
 * - `running`: `smfi_main` is serving connections.
 * - `draining`: `stop` was called; new connections are refused while open ones finish.
 * - `stopped`: `smfi_main` returned; libmilter cannot run again in this process.
 */
export type Phase = "idle" | "running" | "draining" | "stopped";

export const lifecycle: {
  phase: Phase;
  /** The registered filter's name, `null` before `register`. */
  filterName: string | null;
  /** The connection spec given to `setconn`, `null` before. */
  conn: string | null;
  /** The same, parsed. */
  socket: SocketSpec | null;
  /** Whether opensocket has created the listening socket. */
  socketOpen: boolean;
  /** Permissions given to a unix socket when it is created. */
  socketMode: number;
  /** Whether an inet socket gets TCP_NODELAY when it is created. */
  tcpNoDelay: boolean;
} = {
  phase: "idle",
  filterName: null,
  conn: null,
  socket: null,
  socketOpen: false,
  socketMode: 0o660,
  tcpNoDelay: true,
};
