/**
 * Calling the variadic `smfi_setmlreply` with up to 32 lines.
 *
 * koffi passes variadic arguments as (type, value) pairs and at most 64 JS
 * arguments per call, so the variadic declaration reaches only 29 lines.
 * Where the C calling convention passes variadic pointer arguments exactly
 * like fixed ones (x86-64 System V: koffi always sets %al; AArch64 outside
 * Apple), the fixed 32-slot declaration is used, padded with NULLs, which
 * also terminate the list. Elsewhere the variadic declaration is used.
 *
 * @module
 */

import process from "node:process";
import { MAXREPLIES } from "./constants.ts";
import type { Libmilter } from "./load.ts";
import type { Pointer } from "./memory.ts";

/** Lines the variadic declaration can carry under koffi's 64-argument limit. */
export const VARIADIC_MAX_LINES = 29;

/** Whether fixed parameters match variadic ones for pointers on this platform. */
export const FIXED_ARITY_IS_SAFE: boolean = process.arch === "x64"
  ? process.platform !== "win32"
  : process.arch === "arm64" && process.platform !== "darwin" && process.platform !== "win32";

/** The most lines {@linkcode setmlreply} can send on this platform. */
export const MAX_LINES: number = FIXED_ARITY_IS_SAFE ? MAXREPLIES : VARIADIC_MAX_LINES;

/** Calls `smfi_setmlreply(ctx, rcode, xcode, lines..., NULL)`; `lines` has 1 to {@linkcode MAX_LINES} entries. */
export function setmlreply(
  lib: Libmilter,
  ctx: Pointer,
  rcode: string,
  xcode: string | null,
  lines: readonly string[],
): number {
  if (FIXED_ARITY_IS_SAFE) {
    const slots = Array.from({ length: MAXREPLIES + 1 }, (_, i) => lines[i] ?? null) as FixedSlots;
    return lib.functions.smfi_setmlreply_fixed(ctx, rcode, xcode, ...slots);
  }
  const pairs = lines.flatMap((line) => ["const char *", line]);
  return lib.functions.smfi_setmlreply(ctx, rcode, xcode, ...pairs, "const char *", null);
}

/** The 32 line slots and the NULL terminator of the fixed declaration. */
type FixedSlots = Parameters<Libmilter["functions"]["smfi_setmlreply_fixed"]> extends
  [unknown, unknown, unknown, ...infer S] ? S
  : never;
