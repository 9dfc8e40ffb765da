/**
 * The one error class of the module, the funnel every libmilter return code
 * goes through, and the helpers that describe and check arguments for errors.
 *
 * @module
 */

import { MI_FAILURE, MI_SUCCESS } from "../ffi/constants.ts";

/**
 * Raised by every function of this module on failure (the OCaml
 * `Milter_error`). The message starts with the OCaml-style name of the
 * function, then says why: `Milter.addheader: only allowed in eom, not in
 * header`.
 */
export class MilterError extends Error {
  /** Always `"MilterError"`. */
  override name = "MilterError";
  /** The function that failed, as OCaml names it: `"Milter.addheader"`. */
  readonly fn: string;
  /** libmilter's return code when the failure came from C, else `null`. */
  readonly code: number | null;

  constructor(fn: string, reason: string, options?: { cause?: unknown; code?: number }) {
    super(`${fn}: ${reason}`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.fn = fn;
    this.code = options?.code ?? null;
  }
}

/** Builds the OCaml-style name of a facade function. */
export function qualified(fn: string): string {
  return `Milter.${fn}`;
}

/** The {@linkcode MilterError} of facade function `fn` (e.g. `"addheader"`), for a rejection. */
export function milterError(fn: string, reason: string, options?: { cause?: unknown; code?: number }): MilterError {
  return new MilterError(qualified(fn), reason, options);
}

/** Throws a {@linkcode MilterError} for `fn`. */
export function fail(fn: string, reason: string, options?: { cause?: unknown; code?: number }): never {
  throw milterError(fn, reason, options);
}

/**
 * The check funnel: returns when libmilter answered MI_SUCCESS, throws a
 * {@linkcode MilterError} naming `fn` otherwise. `why` explains the failure
 * when the facade knows the likely cause; it is called only on failure.
 */
export function check(fn: string, rc: number, why?: () => string): void {
  if (rc === MI_SUCCESS) return;
  const reason = why?.() ?? (rc === MI_FAILURE ? "libmilter returned MI_FAILURE" : `libmilter returned ${rc}`);
  fail(fn, reason, { code: rc });
}

/** Whether `value` is a Promise or any other thenable. */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null | undefined)?.then === "function";
}

/**
 * A short description of a value for error messages. Total: a value that
 * cannot even be inspected (a revoked Proxy) is "an uninspectable value".
 */
export function describe(value: unknown): string {
  try {
    return describeValue(value);
  } catch {
    return "an uninspectable value";
  }
}

function describeValue(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === "object") {
    if (Array.isArray(value)) return "an array";
    if (isThenable(value)) return "a Promise";
    return `an object (${value.constructor?.name ?? "null prototype"})`;
  }
  if (typeof value === "function") return "a function";
  return `${typeof value} ${String(value)}`;
}

/**
 * Checks that `value` is an integer from `min` to 2147483647 (a C `int`),
 * raising a {@linkcode MilterError} for `fn` that names `what` otherwise.
 */
export function requireInt(fn: string, what: string, value: unknown, min: number): number {
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > 0x7fffffff) {
    fail(fn, `${what} must be an integer from ${min} to 2147483647, got ${describe(value)}`);
  }
  return value as number;
}
