/**
 * Where one callback's time goes, in µs, without a socket:
 *
 * 1. **koffi relay**: a C thread calling a JS function and waiting for it.
 *    libc's qsort runs on koffi's worker threads (`.async`) with a JS
 *    comparator, so every comparison crosses to the JS thread and back: from
 *    one thread (latency), then from 8 and 32 at once (what the JS thread
 *    sustains when calls queue up, as under load). The same qsort called on
 *    the JS thread gives the direct-call cost.
 * 2. **koffi marshalling**: a JS function with the helo prototype, called
 *    through its C function pointer on the JS thread (no relay).
 * 3. **binding**: the binding's trampolines, called the same way, for each
 *    kind of callback the benchmark filter sees: session lookup, argument
 *    decoding, the user's callback, Stat validation and conversion.
 *
 *   npx tsx bench/profile.ts            (also: deno run -A / bun)
 */

import koffi from "koffi";
import process from "node:process";
import * as Milter from "../mod.ts";
import type { CallbackHandler, CallbackSymbol } from "../ffi/symbols.ts";
import { trampoline } from "../src/trampolines.ts";
import { native } from "../src/native.ts";
import { benchFilter } from "./filters/bench-filter.ts";

Milter.register(benchFilter);
const lib = native("profile"); // loads libmilter, and with it koffi's configuration

const now = (): number => performance.now() * 1000; // µs
function perCall(n: number, run: () => void): number {
  run(); // warm up
  const start = now();
  for (let i = 0; i < n; i++) run();
  return (now() - start) / n;
}

// 1. The relay, with a comparator that answers at once.
const libc = koffi.load("libc.so.6");
const comparator = koffi.proto("int profile_cmp(const void *a, const void *b)");
const qsort = libc.func("void qsort(void *base, size_t n, size_t size, profile_cmp *cmp)");
let comparisons = 0;
const cmp = koffi.register((_a: unknown, _b: unknown) => (comparisons++, 0), koffi.pointer(comparator));
const items = 4096;
const array = new Int32Array(items);

/** µs per comparison: `threads` qsorts at once on koffi's worker threads (0: one qsort on the JS thread). */
async function timeQsort(threads: number): Promise<number> {
  comparisons = 0;
  const start = now();
  if (threads === 0) {
    qsort(array, items, 4, cmp);
  } else {
    const arrays = Array.from({ length: threads }, () => new Int32Array(items));
    await Promise.all(
      arrays.map((a) =>
        new Promise<void>((resolve, reject) =>
          qsort.async(a, items, 4, cmp, (error: unknown) => error ? reject(error) : resolve())
        )
      ),
    );
  }
  return (now() - start) / comparisons;
}

const median = (xs: number[]): number => xs.toSorted((a, b) => a - b)[Math.floor(xs.length / 2)];
const CONCURRENT = [1, 8, 32];
const direct: number[] = [], relayed = new Map<number, number[]>(CONCURRENT.map((k) => [k, []]));
for (let r = 0; r < 5; r++) {
  direct.push(await timeQsort(0));
  for (const k of CONCURRENT) relayed.get(k)!.push(await timeQsort(k));
}

// 2 and 3. Function pointers called on the JS thread, as koffi calls them.
const address = (value: unknown): bigint => koffi.address(value) as bigint;
const ctxAddress = address(koffi.alloc("char", 64)); // stands for an SMFICTX (never dereferenced)
const cString = (text: string): bigint => {
  const bytes = new TextEncoder().encode(`${text}\0`);
  const ptr = koffi.alloc("char", bytes.length);
  koffi.encode(ptr, "char", Array.from(bytes), bytes.length);
  return address(ptr);
};
const helo = cString("client.example");
const headerName = cString("Subject"), headerValue = cString("benchmark message");
const argv = (() => {
  const strings = [cString("<bob@example.net>"), cString("NOTIFY=NEVER")];
  const ptr = koffi.alloc("void *", 3);
  koffi.encode(ptr, "void *", [...strings, null], 3);
  return address(ptr);
})();
const body = address(koffi.alloc("char", 1024));

const N = 200_000;
const call = <K extends CallbackSymbol>(symbol: K, fn: CallbackHandler<K>, ...args: unknown[]): number => {
  const ptr = lib.registerCallback(symbol, fn);
  // the prototype is declared under the callback's C name
  const time = median([0, 1, 2].map(() => perCall(N, () => koffi.call(ptr, symbol, ...args))));
  koffi.unregister(ptr);
  return time;
};
const noop = (): number => 0;
const rows: [string, number][] = [
  ["koffi: call a JS noop (helo prototype) through its pointer", call("xxfi_helo", noop, ctxAddress, helo)],
  ["binding: helo (one C string)", call("xxfi_helo", trampoline("xxfi_helo"), ctxAddress, helo)],
  [
    "binding: header (two C strings)",
    call("xxfi_header", trampoline("xxfi_header"), ctxAddress, headerName, headerValue),
  ],
  ["binding: envrcpt (argv of two)", call("xxfi_envrcpt", trampoline("xxfi_envrcpt"), ctxAddress, argv)],
  ["binding: eoh (no argument)", call("xxfi_eoh", trampoline("xxfi_eoh"), ctxAddress)],
  ["binding: body (1 KiB copied)", call("xxfi_body", trampoline("xxfi_body"), ctxAddress, body, 1024)],
];

const runtime = "Deno" in globalThis
  ? `Deno ${(globalThis as unknown as { Deno: { version: { deno: string } } }).Deno.version.deno}`
  : "Bun" in globalThis
  ? `Bun ${(globalThis as unknown as { Bun: { version: string } }).Bun.version}`
  : `Node ${process.version}`;
console.log(`${runtime}, koffi ${koffi.version}`);
for (const k of CONCURRENT) {
  const label = `relay: qsort comparator from ${k} C thread${k > 1 ? "s" : ""} at once (time / calls)`;
  console.log(`${label.padEnd(63)}${median(relayed.get(k)!).toFixed(2).padStart(7)} µs`);
}
console.log(
  `${"direct: the same comparator called on the JS thread".padEnd(63)}${median(direct).toFixed(2).padStart(7)} µs`,
);
for (const [name, micros] of rows) console.log(`${name.padEnd(63)}${micros.toFixed(2).padStart(7)} µs`);
process.exit(0);
