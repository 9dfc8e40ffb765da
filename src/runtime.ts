/**
 * The only module that knows which runtime it runs on: environment, signals
 * and stderr, through `node:` built-ins that Node, Deno and Bun all provide.
 *
 * @module
 */

import { connect, type Socket } from "node:net";
import process from "node:process";
import type { ConnectTarget } from "./convert.ts";

/** Reads an environment variable; a runtime that forbids it (Deno without `--allow-env`) reads as unset. */
export function env(name: string): string | undefined {
  try {
    return process.env[name];
  } catch {
    return undefined;
  }
}

/** The signals that stop a C milter: libmilter's own set. */
export const STOP_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/**
 * Calls `handler` on each of {@linkcode STOP_SIGNALS} until the returned
 * function removes the handlers again.
 */
export function onStopSignals(handler: (signal: NodeJS.Signals) => void): () => void {
  for (const signal of STOP_SIGNALS) process.on(signal, handler);
  return () => {
    for (const signal of STOP_SIGNALS) process.off(signal, handler);
  };
}

/** Writes one line to standard error. */
export function writeStderr(line: string): void {
  process.stderr.write(line.endsWith("\n") ? line : `${line}\n`);
}

/** Opens a stream connection to `target` (a unix socket's path, or a TCP port and host). */
export function connectTo(target: ConnectTarget): Socket {
  return "path" in target ? connect(target.path) : connect(target.port, target.host);
}
