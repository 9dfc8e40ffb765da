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

/** A file's identity: its device and inode. */
export interface FileIdentity {
  readonly dev: bigint;
  readonly ino: bigint;
}

export const lifecycle: {
  phase: Phase;
  /** The connection spec given to `setconn`, `null` before. */
  conn: string | null;
  /** The same, parsed. */
  socket: SocketSpec | null;
  /** Whether opensocket has created the listening socket. */
  socketOpen: boolean;
  /** The unix socket file this process created, to remove at exit only that one. */
  socketFile: FileIdentity | null;
  /** Permissions given to a unix socket when it is created. */
  socketMode: number;
  /** Whether an inet socket gets TCP_NODELAY when it is created. */
  tcpNoDelay: boolean;
  /** libmilter's largest command, as last set by setmaxdatasize (libmilter's default 65535). */
  maxDataSize: number;
  /** What settimeout, setbacklog and setdbg last gave libmilter (its defaults: 7210 s, SOMAXCONN, 0): main's listener gets them. */
  timeout: number;
  backlog: number;
  dbg: number;
  /** How long a callback's Promise may stay pending, in ms (`null`: no bound); set by main. */
  callbackTimeoutMs: number | null;
  /**
   * Whether the shim answers the no-reply stages header, eoh and body at
   * once and queues them for JS (set by main when the shim is there and
   * `pipelineBytes` is not 0).
   */
  pipelining: boolean;
  /** The macros captured for pipelined calls, by macroKey (one-letter names without braces): their index for the shim. */
  pipelineMacros: ReadonlyMap<string, number>;
} = {
  phase: "idle",
  conn: null,
  socket: null,
  socketOpen: false,
  socketFile: null,
  socketMode: 0o660,
  tcpNoDelay: true,
  maxDataSize: 65535,
  timeout: 7210,
  backlog: 4096,
  dbg: 0,
  callbackTimeoutMs: 8_000,
  pipelining: false,
  pipelineMacros: new Map(),
};
