/**
 * The examples' settings, checked once at start: a setting that is not what
 * the example needs stops it with one line on stderr naming the setting, and
 * exit code 78 (EX_CONFIG), before it listens. Nothing is guessed: `5O` is
 * not 50, and a table of the wrong shape is not half-used.
 */

import process from "node:process";

/** The exit code of a bad setting (EX_CONFIG in sysexits.h). */
export const EX_CONFIG = 78;

/** Stops the example: `<example>: <message>` on stderr, exit code {@linkcode EX_CONFIG}. */
export function fail(message: string): never {
  const example = process.argv[1]?.replace(/^.*\//, "").replace(/\.ts$/, "") ?? "example";
  process.stderr.write(`${example}: ${message}\n`);
  process.exit(EX_CONFIG);
}

/**
 * The environment variable `name` as a whole number from 1 to `max`, or
 * `fallback` when it is unset. Digits only: `5O`, `1e3`, `0x10`, `-1`, `2.5`
 * and the empty string stop the example (see {@linkcode fail}).
 */
export function positiveInteger(name: string, fallback: number, max: number = Number.MAX_SAFE_INTEGER): number {
  const text = process.env[name];
  if (text === undefined) return fallback;
  const value = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(value >= 1 && value <= max)) {
    const range = max === Number.MAX_SAFE_INTEGER ? "of at least 1" : `from 1 to ${max}`;
    fail(`${name}=${JSON.stringify(text)} is not a whole number ${range}`);
  }
  return value;
}
