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

/**
 * Calls `handler` with the exit code when the program ends (the `exit`
 * event: process.exit, an uncaught exception, or the event loop running
 * dry), until the returned function removes it.
 */
export function onProgramExit(handler: (code: number) => void): () => void {
  const listener = (code: number | undefined): void => handler(Number(code ?? process.exitCode ?? 0));
  process.on("exit", listener);
  return () => {
    process.off("exit", listener);
  };
}

/**
 * Bun does not end a program on an uncaught exception or an unhandled
 * rejection while its entry module waits in a top-level `await`
 * (oven-sh/bun#9843 and #22546): a filter written as the README shows it
 * (`await Milter.main()`) would serve on after an error that ends it under
 * Node and Deno. Under Bun, until the returned function is called, this does
 * what the runtime would: prints the error and exits with code 1, unless
 * the program listens for that event itself. Elsewhere it does nothing.
 */
export function exitOnFatalErrors(): () => void {
  if (process.versions.bun === undefined) return () => {};
  const fatal = (event: "uncaughtException" | "unhandledRejection") => (error: unknown): void => {
    if (process.listenerCount(event) > 1) return; // the program handles it
    console.error(error);
    process.exit(1);
  };
  const onException = fatal("uncaughtException");
  const onRejection = fatal("unhandledRejection");
  process.on("uncaughtException", onException);
  process.on("unhandledRejection", onRejection);
  return () => {
    process.off("uncaughtException", onException);
    process.off("unhandledRejection", onRejection);
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
