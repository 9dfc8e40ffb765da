/**
 * Where failures of filter callbacks are reported: stderr unless the program
 * installs its own reporter with {@linkcode setErrorReporter}.
 *
 * @module
 */

import type { Ctx } from "./ctx.ts";
import type { CallbackName } from "./stages.ts";
import { describe, fail } from "./error.ts";
import { writeStderr } from "./runtime.ts";
import { countFailure } from "./stats.ts";

/** What went wrong, beside the error itself. */
export interface ErrorInfo {
  /** The callback that failed. */
  readonly callback: CallbackName;
  /** The registered filter's name. */
  readonly filter: string;
  /**
   * The connection's context, usable inside the reporter (e.g.
   * `getsymval(ctx, "i")`): every failure is reported before its answer
   * goes to libmilter, while the connection still waits for it (for a
   * pipelined callback, getsymval gives the macros captured for it).
   */
  readonly ctx: Ctx;
  /**
   * `"exception"` when the callback threw or its Promise rejected,
   * `"bad-return"` when it answered something that is not a valid answer,
   * `"timeout"` when its Promise was still pending at `callbackTimeout` (or
   * when libmilter stopped), `"stale"` when code the callback left running
   * (its Promise after it had answered or timed out, a timer it set) used
   * the Ctx afterwards: the use raised `MilterError` and reached nothing; the
   * callback's answer had gone out already, and `ctx` is usable here only
   * while a callback of that connection runs.
   */
  readonly kind: "exception" | "bad-return" | "timeout" | "stale";
}

/** A function that receives callback failures. */
export type ErrorReporter = (error: unknown, info: ErrorInfo) => void;

/** The stack or text of a thrown value; total, whatever was thrown. */
function detailOf(error: unknown): string {
  try {
    return error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
  } catch {
    return `(${describe(error)} was thrown)`;
  }
}

const defaultReporter: ErrorReporter = (error, info) => {
  const detail = detailOf(error);
  writeStderr(
    `milter ${JSON.stringify(info.filter)}: ${info.callback} callback failed (${info.kind}) on ${info.ctx}; ` +
      `answered Tempfail\n${detail}`,
  );
};

let reporter: ErrorReporter = defaultReporter;

/**
 * Replaces the reporter of callback failures. A callback that throws, or
 * returns anything but a valid answer, makes the binding answer `Tempfail`
 * (with the reply `451 4.3.0`) and then call the reporter; the default one
 * writes the error and its stack to stderr. `null` restores the default.
 * A reporter that throws is itself reported to stderr.
 *
 * This function is an extension: the OCaml module has no equivalent.
 */
export function setErrorReporter(fn: ErrorReporter | null): void {
  if (fn !== null && typeof fn !== "function") {
    fail("setErrorReporter", `expected a function or null, got ${describe(fn)}`);
  }
  reporter = fn ?? defaultReporter;
}

/** The registered filter's name, for {@linkcode ErrorInfo.filter}. */
let filterName = "";

/** Names the filter in what {@linkcode report} reports (once, when it registers). */
export function reportFor(name: string): void {
  filterName = name;
}

/** Hands a failure to the reporter (of the registered filter unless `filter` names another); never throws. */
export function report(error: unknown, failure: Omit<ErrorInfo, "filter"> & { readonly filter?: string }): void {
  countFailure(failure.callback, failure.kind);
  const info: ErrorInfo = { ...failure, filter: failure.filter ?? filterName };
  try {
    reporter(error, info);
  } catch (reporterError) {
    try {
      defaultReporter(error, info);
      writeStderr(`milter: the error reporter itself threw: ${detailOf(reporterError)}`);
    } catch {
      // stderr is gone; nothing else can be done
    }
  }
}
