/**
 * The typed native boundary: every declaration's TypeScript signature has
 * the arity of its C prototype (checked when ffi/symbols.ts compiles, and
 * here against koffi's own parse of each prototype), and a call with
 * arguments in the wrong order or of the wrong count does not compile.
 */

import koffi from "koffi";
import { describe, expect, test } from "vitest";
import type { Libmilter } from "../ffi/load.ts";
import {
  CALLBACK_PROTOTYPES,
  declare,
  declaredArity,
  FUNCTION_PROTOTYPES,
  INTERNAL_PROTOTYPES,
  LIBC_PROTOTYPES,
  OPTIONAL_PROTOTYPES,
} from "../ffi/symbols.ts";

const TABLES = { CALLBACK_PROTOTYPES, FUNCTION_PROTOTYPES, OPTIONAL_PROTOTYPES, INTERNAL_PROTOTYPES, LIBC_PROTOTYPES };

// The types the prototypes name, under names of this test's own.
koffi.opaque("SMFICTX_boundary");
koffi.struct("rlimit_boundary", { rlim_cur: "unsigned long", rlim_max: "unsigned long" });
koffi.struct("smfiDesc_boundary", { xxfi_name: "const char *" });

let unique = 0;

/** How many parameters koffi finds in prototype `c` (a variadic `...` not counted). */
function koffiArity(c: string): number {
  const renamed = c.replace(/(\w+)\(/, (_, name) => `${name}_boundary${unique++}(`).replace(
    /\bSMFICTX\b/g,
    "SMFICTX_boundary",
  ).replace(/\brlimit\b/, "rlimit_boundary")
    .replace(/\bsmfiDesc\b/, "smfiDesc_boundary");
  const type = koffi.type(koffi.proto(renamed)) as unknown as { proto: { arguments: unknown[] } };
  return type.proto.arguments.length;
}

describe.each(Object.entries(TABLES))("%s", (_name, table) => {
  test.each(Object.entries(table))("%s: the declared arity is koffi's", (symbol, declared) => {
    const variadic = declared.c.includes("...");
    expect(declaredArity(declared.c)).toBe(koffiArity(declared.c) + (variadic ? 1 : 0));
    expect(declared.c).toContain(`${symbol.replace(/_fixed$/, "")}(`);
  });
});

test("a signature of the wrong arity, or a call with arguments in the wrong order, does not compile", () => {
  // Each line below is a compile error (tsc --noEmit in `npm test`); @ts-expect-error fails the build if it is not.
  declare<(ctx: bigint, headerf: string, headerv: string) => number>()(
    // @ts-expect-error smfi_insheader takes four arguments, not three
    "int smfi_insheader(SMFICTX *ctx, int hdridx, const char *headerf, const char *headerv)",
  );
  const call = (lib: Libmilter): void => {
    // @ts-expect-error smfi_insheader takes the index before the name (smfi_chgheader after it)
    lib.functions.smfi_insheader(1n, "Subject", 0, "v");
    // @ts-expect-error smfi_chgheader takes the name before the index
    lib.functions.smfi_chgheader(1n, 0, "Subject", "v");
    // @ts-expect-error smfi_addheader has no index argument
    lib.functions.smfi_addheader(1n, "Subject", 0, "v");
    // @ts-expect-error a missing argument
    lib.functions.smfi_setreply(1n, "550", "5.7.1");
    lib.functions.smfi_insheader(1n, 0, "Subject", "v");
  };
  expect(typeof call).toBe("function");
});
