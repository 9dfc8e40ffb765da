/**
 * The contract between the TypeScript side and the native shim, checked
 * against the C source (`ffi/shim/milter_shim.c`): the callbacks' order
 * (`CB_*`) against the one table of stages, what the shim can pipeline, the
 * pending code, the words of a queued call, the write kinds (`OP_*`) and
 * their libmilter functions, the statistics' order, and the libmilter codes
 * the shim answers with itself. Change one side alone and this fails.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "vitest";
import * as C from "../ffi/constants.ts";
import {
  CALL_WORDS,
  FAILED_WRITE,
  PENDING,
  PIPELINE_STATS,
  PIPELINED_SYMBOLS,
  SHIM_PROTOTYPES,
  WRITE_FUNCTIONS,
  WRITE_KINDS,
} from "../ffi/shim.ts";
import { CALLBACK_SYMBOLS, declaredArity } from "../ffi/symbols.ts";
import { CALLBACK_NAMES, STAGES } from "../src/stages.ts";
import { ROOT } from "./helpers/runtimes.ts";

const source = readFileSync(join(ROOT, "ffi/shim/milter_shim.c"), "utf8");

/** The members of the C enum whose first member is `first`, in order. */
function enumMembers(first: string): string[] {
  const body = new RegExp(`enum\\s*{\\s*(${first}[^}]*)}`).exec(source)?.[1];
  if (body === undefined) throw new Error(`no enum starting with ${first} in milter_shim.c`);
  return body.split("\n").map((line) => /^\s*([A-Z][A-Za-z_]*)/.exec(line.replace(/\/\*.*?\*\//g, ""))?.[1])
    .filter((name): name is string => name !== undefined);
}

/** The value of `#define name value`. */
function define(name: string): string {
  const value = new RegExp(`#define ${name}\\s+(\\S+)`).exec(source)?.[1];
  if (value === undefined) throw new Error(`no #define ${name} in milter_shim.c`);
  return value;
}

describe("the shim and the table of stages agree", () => {
  test("CB_* is struct smfiDesc order, the order of the stages", () => {
    const members = enumMembers("CB_connect").filter((m) => m.startsWith("CB_"));
    expect(members.map((m) => m.slice("CB_".length))).toEqual([...CALLBACK_NAMES]);
    expect(CALLBACK_SYMBOLS.map((s) => s.slice("xxfi_".length))).toEqual([...CALLBACK_NAMES]);
    expect(Object.values(STAGES).map((s) => s.index)).toEqual(CALLBACK_NAMES.map((_, i) => i));
  });

  test("what the shim pipelines (PIPELINABLE) is what the stages say", () => {
    const full = /#define PIPELINABLE \(([^)]*)\)/.exec(source)![1];
    expect([...full.matchAll(/CB_(\w+)/g)].map((m) => m[1])).toEqual(
      CALLBACK_NAMES.filter((name) => STAGES[name].pipelinable),
    );
    expect(PIPELINED_SYMBOLS.map((s) => s.slice("xxfi_".length))).toEqual(
      CALLBACK_NAMES.filter((name) => STAGES[name].pipelinable),
    );
  });

  test("what the shim queues for every connection (QUEUED_ALWAYS) is what the stages say", () => {
    const full = /#define QUEUED_ALWAYS \(([^)]*)\)/.exec(source)![1];
    expect([...full.matchAll(/CB_(\w+)/g)].map((m) => m[1])).toEqual(
      CALLBACK_NAMES.filter((name) => STAGES[name].queuedWithoutCallback),
    );
    expect(
      CALLBACK_NAMES.filter((name) => STAGES[name].queuedWithoutCallback).every((name) =>
        STAGES[name].failure === "ignored"
      ),
    )
      .toBe(true);
  });
});

describe("the constants both sides use", () => {
  test("the pending code, the words of a queued call, the failed write's callback index", () => {
    expect(Number(define("MILTER_SHIM_PENDING"))).toBe(PENDING);
    expect(Number(define("SHIM_CALL_WORDS"))).toBe(CALL_WORDS);
    expect(Number(define("SHIM_FAILED_WRITE"))).toBe(FAILED_WRITE);
  });

  test("the libmilter codes the shim answers with itself", () => {
    expect(Number(define("SHIM_SMFIS_TEMPFAIL"))).toBe(C.SMFIS_TEMPFAIL);
    expect(Number(define("SHIM_SMFIS_NOREPLY"))).toBe(C.SMFIS_NOREPLY);
  });

  test("OP_* are the write kinds, in the order of their libmilter functions", () => {
    const ops = enumMembers("OP_addheader").filter((m) => m.startsWith("OP_")).map((m) => m.slice("OP_".length));
    expect(ops).toEqual(WRITE_FUNCTIONS.map((fn) => fn.slice("smfi_".length)));
    // OP_addheader is 1 and each next one more; setreply is the shim's own, not a kind JS posts.
    expect(Object.entries(WRITE_KINDS)).toEqual(ops.slice(0, -1).map((op, i) => [op, i + 1]));
  });

  test("milter_shim_pipeline_stat's order", () => {
    const stats = /stats\[\] = \{([^}]*)\}/.exec(source)![1].split(",").map((s) => s.trim().replace("&stat_", ""));
    const names: Record<string, string> = {
      bytes: "bytes",
      peak: "peakBytes",
      waits: "waits",
      conns: "connections",
      rings: "rings",
      queued: "calls",
      relayed: "relayed",
      refused: "refused",
    };
    expect(stats.map((s) => names[s])).toEqual([...PIPELINE_STATS]);
  });
});

/** Every `MILTER_SHIM_EXPORT` function of the C file: its return type and how many parameters it takes. */
function cExports(): Map<string, { returns: string; arity: number }> {
  const found = new Map<string, { returns: string; arity: number }>();
  for (const match of source.matchAll(/MILTER_SHIM_EXPORT\s+([\w\s*]+?)\s*\b(milter_shim_\w+)\(/g)) {
    let depth = 1;
    let commas = 0;
    let i = match.index! + match[0].length;
    const start = i;
    for (; depth > 0; i++) {
      if (source[i] === "(") depth++;
      else if (source[i] === ")") depth--;
      else if (source[i] === "," && depth === 1) commas++;
    }
    const params = source.slice(start, i - 1).trim();
    found.set(match[2], {
      returns: match[1].replace(/\s+/g, " ").replace(/\s*\*$/, " *").trim(),
      arity: params === "void" ? 0 : commas + 1,
    });
  }
  return found;
}

describe("the shim's exports", () => {
  test("one prototype per export, with the C definition's return type and arity", () => {
    const exports = cExports();
    expect([...exports.keys()].sort()).toEqual(Object.keys(SHIM_PROTOTYPES).sort());
    for (const [name, declared] of Object.entries(SHIM_PROTOTYPES)) {
      const c = exports.get(name)!;
      expect({ name, returns: declared.c.slice(0, declared.c.indexOf(name)).trim(), arity: declaredArity(declared.c) })
        .toEqual({ name, returns: c.returns, arity: c.arity });
    }
  });

  test("scripts/build-shim.sh exports exactly those", () => {
    const script = readFileSync(join(ROOT, "scripts/build-shim.sh"), "utf8");
    const listed = /^EXPORTS="([^"]*)"/m.exec(script)![1].split(/\s+/);
    expect(listed.sort()).toEqual(Object.keys(SHIM_PROTOTYPES).sort());
  });
});
