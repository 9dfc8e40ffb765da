/**
 * The native shim, `ffi/shim/milter_shim.c`, shipped prebuilt for
 * linux-x64 (glibc and musl) and linux-arm64 (glibc): finding the object for
 * this process, loading it with koffi, and its typed API.
 *
 * Its jobs:
 *
 * - {@linkcode Shim.runMilter} runs `smfi_main` on a detached thread of the
 *   shim's own, where koffi's `.async` would occupy a thread of the runtime's
 *   worker pool that the runtime joins on exit (under Node, `process.exit()`
 *   then hangs for as long as the milter runs), and once it returns lets no
 *   thread call into JS any more ({@linkcode Shim.exit} likewise at exit);
 * - {@linkcode Shim.wrap} puts the shim's wrappers between libmilter and
 *   JS: each queues its call, and libmilter's thread waits in the shim
 *   until JS answers with {@linkcode Shim.reply}, at once or later;
 * - {@linkcode Shim.bindPipeline} starts the one bell that brings the queued
 *   calls to JS ({@linkcode Shim.take}), and lets the wrappers answer the
 *   no-reply stages header, eoh and body at once, queueing their calls
 *   without waiting.
 *
 * Nothing here runs at import time: {@linkcode openShim} loads on first call.
 *
 * @module
 */

import koffi, { type TypeObject } from "koffi";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { pinLibrary, runsOnGlibc } from "./dl.ts";
import {
  bindAll,
  CALLBACK_PROTOTYPES,
  CALLBACK_SYMBOLS,
  type CallbackSymbol,
  declare,
  type Signatures,
} from "./symbols.ts";

/** The ABI version of the shim this file is written for; see `milter_shim_abi()`. */
export const SHIM_ABI = 9;

/** Environment variable naming a shim object to load instead of the prebuilt one. */
export const SHIM_PATH_ENV = "MILTER_SHIM_PATH";

/** The platforms a prebuilt object ships for: `<os>-<arch>-<libc>`, a directory of `ffi/shim/prebuilt/`. */
export const PREBUILT_TARGETS: readonly string[] = ["linux-x64-gnu", "linux-arm64-gnu", "linux-x64-musl"];

/** The loaded shim. */
export interface Shim {
  /** The file that loaded. */
  readonly path: string;
  /** What the object's `milter_shim_abi()` returned: {@linkcode SHIM_ABI}. */
  readonly abi: number;
  /**
   * Calls the C function `int mainFn(void)` (libmilter's `smfi_main`, whose
   * address {@linkcode functionAddress} gives) on a new detached thread with
   * every signal blocked, then `done` with its result on the JS thread. The
   * process is kept alive until `done` has run, as a pending `.async` call
   * would; `process.exit()` still ends it at once.
   *
   * @param mainFn the address of a C function `int (void)`.
   * @param done called once, on the JS thread, with what `mainFn` returned.
   * @throws {Error} when the thread cannot be started (the message carries the error number); `done` is then never called.
   */
  startMain(mainFn: bigint, done: (rc: number) => void): void;
  /**
   * {@linkcode startMain} for libmilter's `smfi_main`
   * (`milter_shim_run_milter`): when it returns, the shim closes before
   * `done` runs. No thread calls into JS from then on: the connections
   * libmilter still serves are answered Tempfail with the `451 4.3.0` reply
   * of {@linkcode bindWrites} (nothing at a no-reply stage: their message is
   * answered so at its next replying stage), callbacks still waiting for a
   * {@linkcode reply} are answered so at once, queued calls not taken are
   * dropped, and the bell stops. `done` runs once every call into JS that
   * was under way has returned.
   *
   * @throws {Error} as {@linkcode startMain}.
   */
  runMilter(mainFn: bigint, done: (rc: number) => void): void;
  /**
   * {@linkcode runMilter} with libmilter's `mi_listener` (at `listener`) in
   * place of `smfi_main` (`milter_shim_run_listener`): the same, without
   * libmilter's signal thread, so that every stop signal reaches JS (that
   * thread stops libmilter, undrained, on any signal it happens to get).
   * After {@linkcode wrap}; once per process.
   *
   * @throws {Error} as {@linkcode startMain}.
   */
  runListener(listener: bigint, listen: Listen, done: (rc: number) => void): void;
  /**
   * For the runtime's exit handler while `smfi_main` runs
   * (`milter_shim_exit`): closes the shim for good, as {@linkcode runMilter}
   * does, and `done` never runs. Should a thread be inside a call into JS
   * then (blocked in koffi's relay, which the runtime is about to free), the
   * process ends here with `_exit(code)`, before the runtime tears down.
   */
  exit(code: number): void;
  /**
   * What a handler of a {@linkcode RelayedCall} returns when it answers later
   * ({@linkcode later}, then {@linkcode reply}): `MILTER_SHIM_PENDING`,
   * 65536 (no libmilter status).
   */
  readonly pendingCode: number;
  /**
   * The shim's wrappers for the callbacks JS handles, once per process
   * (`milter_shim_wrap`): `callbacks` holds the `xxfi_*` symbols JS has a
   * handler for. Each wrapper queues its call for {@linkcode take} (as a
   * {@linkcode RelayedCall}), and libmilter's thread waits until
   * {@linkcode reply} gives the status for its token.
   *
   * @returns an address per callback, in `struct smfiDesc` order: the
   *   shim's wrapper for those named, `null` for the others.
   * @throws {Error} when the shim already wrapped callbacks in this process.
   */
  wrap(callbacks: readonly CallbackSymbol[]): (bigint | null)[];
  /**
   * Answers the call `token` names (a {@linkcode RelayedCall}) with `code`
   * (`milter_shim_reply`), from the JS thread.
   *
   * @returns `true` when delivered; `false`, changing nothing, when the call
   *   is no longer waiting for it (already answered, over) or never existed.
   */
  reply(token: number, code: number): boolean;
  /**
   * Marks the call `token` names as answered later (a Promise): writes
   * posted for it from now on are done at once, while it waits for its
   * {@linkcode reply}, and {@linkcode waiting} counts it.
   */
  later(token: number): void;
  /** How many calls marked {@linkcode later} wait for a {@linkcode reply} right now (`milter_shim_pending`). */
  waiting(): number;
  /**
   * Gives the shim libmilter's write functions (`milter_shim_bind_writes`),
   * in {@linkcode WRITE_FUNCTIONS} order, each an address or `null`; the
   * text of the `451 4.3.0` reply set when a write fails; and `onFailure`,
   * called by {@linkcode take} with the connection's `SMFICTX` and the
   * write's kind after a write failed, while its callback waits to answer
   * Tempfail. Once per process, before any {@linkcode post}.
   *
   * @throws {Error} when the shim refuses them.
   */
  bindWrites(
    functions: readonly (bigint | null)[],
    failureText: string,
    onFailure: (ctx: bigint, kind: number) => void,
  ): void;
  /**
   * Hands a write to the thread of the wrapped call `token` names
   * (`milter_shim_post`), which does it, in order, before the call answers.
   * `kind` is a {@linkcode WRITE_KINDS} value. Everything is copied.
   *
   * @returns `true` when posted; `false` when the call takes no more writes (answered, over) or memory ran out.
   */
  post(token: number, write: ShimWrite): boolean;
  /**
   * Starts the bell and the pipeline (`milter_shim_bind_pipeline`), which
   * every wrapper needs: `bell` is relayed to the JS thread whenever calls
   * wait for {@linkcode take}, and again after it returns while some still
   * do; one connection's calls queued or
   * running stay within `boundBytes`; the `macros` are captured for each
   * queued call with `getsymval` (the address of `smfi_getsymval`), for
   * {@linkcode symval}; the callbacks `always` names (among
   * {@linkcode QUEUED_ALWAYS_SYMBOLS}) are queued for every connection. Once
   * per process, before `smfi_main`.
   *
   * @throws {Error} when the shim refuses (a second call) or cannot start its thread.
   */
  bindPipeline(
    bell: () => void,
    boundBytes: number,
    getsymval: bigint | null,
    macros: readonly string[],
    always: readonly QueuedSymbol[],
  ): void;
  /** The value `macros[index]` of {@linkcode bindPipeline} had for a queued call (`milter_shim_symval`), `null` if unsent. */
  symval(call: QueuedCall, index: number): string | null;
  /**
   * Pipelines `callbacks` of the connection at `ctx` from now on
   * (`milter_shim_pipeline`), none for an empty list. Called from that
   * connection's negotiate handler.
   *
   * @returns `false` when pipelining is off or memory ran out (nothing is pipelined then).
   */
  pipeline(ctx: bigint, callbacks: readonly PipelinedSymbol[]): boolean;
  /**
   * The calls waiting for JS, oldest first, at most {@linkcode TAKE_BATCH}
   * (`milter_shim_take_batch`): answer each {@linkcode RelayedCall} with
   * {@linkcode reply}, end each {@linkcode QueuedCall} with {@linkcode done}.
   * A failed write's notice is handled here (the `onFailure` of
   * {@linkcode bindWrites}), not returned.
   */
  take(): TakenCall[];
  /**
   * Ends queued calls {@linkcode take} gave (`milter_shim_done_batch`): their
   * memory is freed. A call already ended is skipped.
   */
  done(calls: readonly QueuedCall[]): void;
  /** The pipeline's figures (`milter_shim_pipeline_stat`). */
  pipelineStats(): PipelineStats;
  /** How many times libmilter called each wrapper, in `struct smfiDesc` order (`milter_shim_pipeline_stat`). */
  wrapperCalls(): number[];
  /**
   * Makes the negotiate wrapper answer without calling JS
   * (`milter_shim_negotiate_itself`), as libmilter does without a negotiate
   * callback: `flags` (the registered actions) and the steps libmilter
   * pre-filled; new connections refused with Tempfail after
   * {@linkcode refuseNew}. `setpriv` and `getpriv` are the addresses of
   * libmilter's `smfi_setpriv` and `smfi_getpriv`, with which the shim marks
   * the connections it admits. Once, before `smfi_main`.
   *
   * @throws {Error} when the shim refuses (a second call, a missing function).
   */
  negotiateItself(flags: number, setpriv: bigint, getpriv: bigint): void;
  /**
   * Installs a generation for the connections that start from now on
   * (`milter_shim_generation`); connections already stamped keep theirs.
   *
   * @returns `false` when the shim refuses (before {@linkcode negotiateItself}, or out of memory).
   */
  generation(generation: Generation): boolean;
  /** Stamps the connection at `ctx` with the live generation `id` (`milter_shim_stamp`), while JS runs its negotiate. */
  stamp(ctx: bigint, id: number): boolean;
  /** Whether the generation `id` is current or still held by a connection (`milter_shim_live`). */
  live(id: number): boolean;
  /** From now on the negotiate wrapper of {@linkcode negotiateItself} refuses new connections (`milter_shim_refuse_new`). */
  refuseNew(): void;
  /**
   * How many connections the negotiate wrapper admitted that have not reached
   * their first close (`milter_shim_admitted`): some JS may not have seen yet.
   */
  admitted(): number;
}

/**
 * A filter as the shim's wrappers see it (`struct generation`): the
 * connections that start while it is current are stamped with it and keep
 * it until they close; every call of theirs carries its `id`.
 */
export interface Generation {
  /** JS's number for it, > 0. */
  readonly id: number;
  /** Whether the shim answers negotiate for it (no negotiate callback of the filter's own). */
  readonly itself: boolean;
  /** The action flags negotiate answers. */
  readonly flags: number;
  /** The NO* steps of the callbacks it lacks, asked where the MTA offers them. */
  readonly absent: number;
  /** The callbacks JS sees; the wrappers answer the others Continue, as libmilter answers a NULL one. */
  readonly relay: readonly CallbackSymbol[];
  /**
   * Those queued without waiting: abort and close without a callback, and
   * the stages observed for the log (envrcpt, eom), answered Continue.
   */
  readonly queued: readonly QueuedSymbol[];
}

/** What `smfi_main` would give libmilter's listener: what the program set, and the registered filter. */
export interface Listen {
  /** `smfi_setconn`'s spec. */
  readonly conn: string;
  /** `smfi_setdbg`'s level. */
  readonly dbg: number;
  /** `smfi_settimeout`'s seconds. */
  readonly timeout: number;
  /** `smfi_setbacklog`'s backlog. */
  readonly backlog: number;
  /** The registered filter's name, version and action flags. */
  readonly name: string;
  readonly version: number;
  readonly flags: number;
}

/** The callbacks the shim can pipeline. */
export type PipelinedSymbol = "xxfi_header" | "xxfi_eoh" | "xxfi_body";

/** The callbacks a generation may have the shim observe: queued for JS without waiting, answered Continue. */
export type ObservedSymbol = "xxfi_envrcpt" | "xxfi_eom";

/**
 * The callbacks the shim queues: those it can pipeline, abort and close,
 * whose answers libmilter ignores, and those observed without a callback.
 */
export type QueuedSymbol = PipelinedSymbol | "xxfi_abort" | "xxfi_close" | ObservedSymbol;

/**
 * A call the shim answered at once and queued (`struct milter_shim_call`):
 * the connection, the callback, and copies of its arguments, valid until
 * {@linkcode Shim.done}.
 */
export interface QueuedCall {
  /** The address of the shim's record, for {@linkcode Shim.done}. */
  readonly address: bigint;
  /** The connection's `SMFICTX`. */
  readonly ctx: bigint;
  readonly symbol: QueuedSymbol;
  /** The id of the connection's {@linkcode Generation}, 0 when it has none. */
  readonly generation: number;
  /** header: its name and value; `null` otherwise. */
  readonly a: bigint | null;
  readonly b: bigint | null;
  /** body: the chunk and its length; `null` and 0 otherwise. */
  readonly bytes: bigint | null;
  readonly len: number;
}

/**
 * A call libmilter's thread waits for in its wrapper: answered with
 * {@linkcode Shim.reply} (after {@linkcode Shim.later} when it answers
 * later). Its arguments point into libmilter's memory, valid until then.
 */
export interface RelayedCall {
  readonly token: number;
  readonly symbol: CallbackSymbol;
  /** The id of the connection's {@linkcode Generation}, 0 when it has none. */
  readonly generation: number;
  /** The handler's arguments: the `SMFICTX`, libmilter's arguments (pointers as addresses or `null`), the token. */
  readonly args: readonly unknown[];
}

/** What {@linkcode Shim.take} gives: calls libmilter waits for, and queued calls. */
export type TakenCall = RelayedCall | QueuedCall;

/** How much the pipeline holds, and has held. */
export interface PipelineStats {
  /** Bytes of calls queued or running now, all connections together. */
  readonly bytes: number;
  /** The most bytes one connection ever had queued or running. */
  readonly peakBytes: number;
  /** How many times a connection's thread waited for room in its queue (backpressure). */
  readonly waits: number;
  /** Connections with pipelining state now (negotiated, not closed). */
  readonly connections: number;
  /** How many times the shim rang JS for queued calls. */
  readonly rings: number;
  /** How many calls were queued in all: with `rings`, how many calls one ring brings on average. */
  readonly calls: number;
  /** How many calls libmilter's threads waited for, in all (round trips to JS). */
  readonly relayed: number;
  /** How many connections the shim refused at negotiate (draining, or closed). */
  readonly refused: number;
}

/** The most calls one {@linkcode Shim.take} returns. */
export const TAKE_BATCH = 256;

/** The words `milter_shim_take_batch` writes per call (SHIM_CALL_WORDS): address, ctx, callback, token, 8 arguments. */
export const CALL_WORDS = 12;

/** The callback index of a failed write's notice (SHIM_FAILED_WRITE): its first argument word is the write's kind. */
export const FAILED_WRITE = 13;

/**
 * The shim's exports, each with the signature of its binding (its arity
 * checked against the prototype when this file compiles; `test/contract.test.ts`
 * checks the prototypes against `milter_shim.c` and the export list of
 * `scripts/build-shim.sh`). A function pointer the shim calls back (`done`,
 * `bell`) is a `void *` here: a callback registered with koffi
 * under {@linkcode callbackTypes}.
 */
export const SHIM_PROTOTYPES = {
  milter_shim_abi: declare<() => number>()("int milter_shim_abi(void)"),
  milter_shim_start_main: declare<(mainFn: bigint, done: unknown) => number>()(
    "int milter_shim_start_main(void *main_fn, void *done)",
  ),
  milter_shim_run_milter: declare<(mainFn: bigint, done: unknown) => number>()(
    "int milter_shim_run_milter(void *main_fn, void *done)",
  ),
  milter_shim_run_listener: declare<
    (
      listener: bigint,
      conn: string,
      dbg: number,
      name: string,
      version: number,
      flags: number,
      timeout: number,
      backlog: number,
      done: unknown,
    ) => number
  >()(
    "int milter_shim_run_listener(void *listener, const char *conn, int dbg, const char *name, int version, unsigned long flags, long timeout, int backlog, void *done)",
  ),
  milter_shim_exit: declare<(code: number) => void>()("void milter_shim_exit(int code)"),
  // koffi copies a JS array into a C array for a pointer parameter, and back into the same JS array for an _Out_ one.
  milter_shim_wrap: declare<(mask: number, out: (bigint | null)[]) => number>()(
    "int milter_shim_wrap(unsigned int mask, _Out_ void **out)",
  ),
  milter_shim_reply: declare<(token: number, code: number) => number>()(
    "int milter_shim_reply(int64_t token, int code)",
  ),
  milter_shim_pending: declare<() => number>()("int milter_shim_pending(void)"),
  milter_shim_bind_writes: declare<(fns: (bigint | null)[], text: string) => number>()(
    "int milter_shim_bind_writes(void **fns, const char *text)",
  ),
  milter_shim_post: declare<
    (
      token: number,
      kind: number,
      index: number,
      a: string | null,
      b: string | null,
      bytes: Uint8Array | null,
      len: number,
    ) => number
  >()(
    "int milter_shim_post(int64_t token, int kind, int index, const char *a, const char *b, const uint8_t *bytes, int len)",
  ),
  milter_shim_bind_pipeline: declare<
    (bell: unknown, bound: number, getsymval: bigint | null, names: string[], count: number, always: number) => number
  >()(
    "int milter_shim_bind_pipeline(void *bell, size_t bound, void *getsymval, const char **names, int count, unsigned int always)",
  ),
  milter_shim_pipeline: declare<(ctx: bigint, mask: number) => number>()(
    "int milter_shim_pipeline(void *ctx, unsigned int mask)",
  ),
  milter_shim_take_batch: declare<(out: BigUint64Array, max: number) => number>()(
    "int milter_shim_take_batch(uint64_t *out, int max)",
  ),
  milter_shim_done_batch: declare<(calls: BigUint64Array, n: number) => void>()(
    "void milter_shim_done_batch(const uint64_t *calls, int n)",
  ),
  milter_shim_symval: declare<(call: bigint, index: number) => string | null>()(
    "const char *milter_shim_symval(void *call, int index)",
  ),
  milter_shim_pipeline_stat: declare<(which: number) => number | bigint>()(
    "int64_t milter_shim_pipeline_stat(int which)",
  ),
  milter_shim_negotiate_itself: declare<(flags: number, setpriv: bigint, getpriv: bigint) => number>()(
    "int milter_shim_negotiate_itself(unsigned long flags, void *setpriv, void *getpriv)",
  ),
  milter_shim_generation: declare<
    (id: number, flags: number, absent: number, relay: number, queued: number, itself: number) => number
  >()(
    "int milter_shim_generation(unsigned int id, unsigned long flags, unsigned long absent, unsigned int relay, unsigned int queued, int itself)",
  ),
  milter_shim_stamp: declare<(ctx: bigint, id: number) => number>()(
    "int milter_shim_stamp(void *ctx, unsigned int id)",
  ),
  milter_shim_live: declare<(id: number) => number>()("int milter_shim_live(unsigned int id)"),
  milter_shim_refuse_new: declare<() => void>()("void milter_shim_refuse_new(void)"),
  milter_shim_admitted: declare<() => number>()("int milter_shim_admitted(void)"),
};

/** The koffi types of the functions the shim calls back. */
interface CallbackTypes {
  /** `void done(int rc)`: start_main's and run_milter's. */
  readonly done: TypeObject;
  /** `void bell(void)`: bind_pipeline's. */
  readonly bell: TypeObject;
}

/**
 * Declares {@linkcode CallbackTypes}. Anonymous, so that two copies of this
 * module (source and dist) in one process do not declare the same type name
 * twice.
 */
function callbackTypes(): CallbackTypes {
  return {
    done: koffi.pointer(koffi.proto("void (int rc)")),
    bell: koffi.pointer(koffi.proto("void (void)")),
  };
}

/** The callbacks the shim can pipeline (its `PIPELINABLE`). */
export const PIPELINED_SYMBOLS: readonly PipelinedSymbol[] = ["xxfi_header", "xxfi_eoh", "xxfi_body"];
/**
 * The callbacks the shim queues for every connection while pipelining is on
 * (its `QUEUED_ALWAYS`): libmilter ignores their answers, so its thread does
 * not wait for JS there.
 */
export const QUEUED_ALWAYS_SYMBOLS: readonly QueuedSymbol[] = ["xxfi_abort", "xxfi_close"];
/**
 * The callbacks beside those that a generation may queue where its filter
 * has no callback (its `QUEUED_OBSERVED`), for JS to see messages end and
 * count recipients without holding libmilter's thread: the shim answers
 * them Continue at once.
 */
export const OBSERVED_SYMBOLS: readonly ObservedSymbol[] = ["xxfi_envrcpt", "xxfi_eom"];
/** Each queued callback's index in `struct smfiDesc` (`CB_*` in milter_shim.c), and back. */
const QUEUED_INDEX: Readonly<Record<QueuedSymbol, number>> = Object.fromEntries(
  [...PIPELINED_SYMBOLS, ...QUEUED_ALWAYS_SYMBOLS, ...OBSERVED_SYMBOLS].map((
    symbol,
  ) => [symbol, CALLBACK_SYMBOLS.indexOf(symbol)]),
) as Record<QueuedSymbol, number>;
const QUEUED_SYMBOL: Readonly<Record<number, QueuedSymbol>> = Object.fromEntries(
  Object.entries(QUEUED_INDEX).map(([symbol, index]) => [index, symbol]),
) as Record<number, QueuedSymbol>;

/** libmilter's write functions, in the order `milter_shim_bind_writes` takes them (OP_* order). */
export const WRITE_FUNCTIONS: readonly string[] = [
  "smfi_addheader",
  "smfi_chgheader",
  "smfi_insheader",
  "smfi_chgfrom",
  "smfi_addrcpt",
  "smfi_addrcpt_par",
  "smfi_delrcpt",
  "smfi_replacebody",
  "smfi_quarantine",
  "smfi_progress",
  "smfi_setreply",
];

/** The kind of each write the shim can do for a connection (OP_* in milter_shim.c). */
export const WRITE_KINDS = {
  addheader: 1,
  chgheader: 2,
  insheader: 3,
  chgfrom: 4,
  addrcpt: 5,
  addrcpt_par: 6,
  delrcpt: 7,
  replacebody: 8,
  quarantine: 9,
  progress: 10,
} as const;

/** One write for the connection's own thread: its kind, header index, string arguments and body bytes. */
export interface ShimWrite {
  readonly kind: keyof typeof WRITE_KINDS;
  readonly index?: number;
  readonly a?: string | null;
  readonly b?: string | null;
  readonly bytes?: Uint8Array | null;
}

/** Why no shim could be loaded, for a message; the caller falls back to running without it. */
export interface ShimUnavailable {
  /** Names the platform or file, what went wrong and the command that builds an object. */
  readonly reason: string;
}

/** `MILTER_SHIM_PENDING` in ffi/shim/milter_shim.c. */
export const PENDING = 0x10000;

/** How many callbacks `struct smfiDesc` has, and `milter_shim_wrap` takes. */
const CALLBACKS = CALLBACK_SYMBOLS.length;

/**
 * How each callback's argument words after ctx become its handler's
 * arguments, from its C prototype: a pointer as an address (`null` for
 * NULL), an integer (`size_t`, `unsigned long`) as a Number.
 */
const ARGUMENT_KINDS: readonly (readonly boolean[])[] = CALLBACK_SYMBOLS.map((symbol) => {
  const c = CALLBACK_PROTOTYPES[symbol].c;
  return c.slice(c.indexOf("(") + 1, -1).split(",").slice(1).map((parameter) => parameter.includes("*"));
});

/** What `milter_shim_pipeline_stat(which)` gives, in `which` order. */
export const PIPELINE_STATS: readonly (keyof PipelineStats)[] = [
  "bytes",
  "peakBytes",
  "waits",
  "connections",
  "rings",
  "calls",
  "relayed",
  "refused",
];

/**
 * This process's platform as a {@linkcode PREBUILT_TARGETS} name, e.g.
 * `"linux-x64-gnu"`, whether or not an object ships for it; `null` off
 * Linux or when its C library cannot be told. The C library is the one the
 * process runs on, asked of the dynamic loader: a glibc system with musl
 * installed beside it (so with `/lib/ld-musl-*.so.1`) is still `gnu`.
 */
export function shimTarget(): string | null {
  if (process.platform !== "linux") return null;
  const glibc = runsOnGlibc();
  if (glibc === null) return null;
  return `linux-${process.arch}-${glibc ? "gnu" : "musl"}`;
}

/** The command that builds an object on a platform without a prebuilt one, from the source beside this module. */
function buildByHand(): string {
  const source = new URL("./shim/milter_shim.c", import.meta.url);
  const path = source.protocol === "file:" ? fileURLToPath(source) : "ffi/shim/milter_shim.c";
  return `cc -O2 -fPIC -shared -pthread -o libmilter_shim.so ${path}`;
}

/** Where the object for `target` lies beside this module (in the source tree or in `dist/ffi/`). */
function prebuiltPath(target: string): string | ShimUnavailable {
  const url = new URL(`./shim/prebuilt/${target}/libmilter_shim.so`, import.meta.url);
  if (url.protocol !== "file:") {
    return { reason: `the milter shim cannot be loaded from ${url.href} (not a local file); set ${SHIM_PATH_ENV}` };
  }
  return fileURLToPath(url);
}

let opened: Shim | ShimUnavailable | undefined;

/**
 * Loads the shim for this process, once: the file `fromEnv` names (the
 * value of `MILTER_SHIM_PATH`, read by the caller) when set, otherwise the prebuilt object for
 * {@linkcode shimTarget}. The object is pinned in memory for the life of the
 * process (`RTLD_NODELETE`): a runtime that finalizes koffi's library handles
 * at exit (Deno does) would otherwise unmap code that the milter's thread
 * may still be running.
 *
 * @returns the shim, or why there is none: an unsupported platform, a missing
 *   or unloadable file, or an ABI other than {@linkcode SHIM_ABI}.
 */
export function openShim(fromEnv?: string): Shim | ShimUnavailable {
  opened ??= load(fromEnv || undefined);
  return opened;
}

function load(fromEnv: string | undefined): Shim | ShimUnavailable {
  let path: string;
  if (fromEnv !== undefined) {
    path = fromEnv;
  } else {
    const target = shimTarget();
    const platform = target ?? `${process.platform}-${process.arch}`;
    if (target === null || !PREBUILT_TARGETS.includes(target)) {
      return {
        reason: `no prebuilt milter shim for ${platform} (there are: ${PREBUILT_TARGETS.join(", ")}); ` +
          `build one with \`${buildByHand()}\` and set ${SHIM_PATH_ENV} to its path`,
      };
    }
    const found = prebuiltPath(target);
    if (typeof found !== "string") return found;
    path = found;
  }
  const rebuild = fromEnv !== undefined
    ? `check ${SHIM_PATH_ENV}`
    : "rebuild it with `npm run build:shim` (sh scripts/build-shim.sh) in a checkout of the package, " +
      `or build one with \`${buildByHand()}\` and set ${SHIM_PATH_ENV} to its path`;

  let lib;
  try {
    lib = koffi.load(path);
  } catch (error) {
    return { reason: `cannot load the milter shim ${path}: ${messageOf(error)}; ${rebuild}` };
  }
  const why = pinLibrary(path);
  if (why !== null) {
    return { reason: `cannot pin the milter shim ${path} in memory: ${why}` };
  }
  let abi: number;
  try {
    abi = (lib.func(SHIM_PROTOTYPES.milter_shim_abi.c) as () => number)();
  } catch (error) {
    return { reason: `${path} is not a milter shim: ${messageOf(error)}; ${rebuild}` };
  }
  if (abi !== SHIM_ABI) {
    return { reason: `the milter shim ${path} has ABI version ${abi}, this module needs ${SHIM_ABI}; ${rebuild}` };
  }
  let fn: Signatures<typeof SHIM_PROTOTYPES>;
  let types: CallbackTypes;
  try {
    fn = bindAll(lib, SHIM_PROTOTYPES);
    types = callbackTypes();
  } catch (error) {
    return { reason: `${path} is not a milter shim: ${messageOf(error)}; ${rebuild}` };
  }
  // Reused by every take and done: only the JS thread calls them, one at a time.
  const words = new BigUint64Array(TAKE_BATCH * CALL_WORDS);
  const addresses = new BigUint64Array(TAKE_BATCH);
  // The calls taken and not given back: a call given back twice (a bug
  // elsewhere) must not reach the shim twice, which would free it twice.
  const outstanding = new Set<bigint>();
  let onFailure: (ctx: bigint, kind: number) => void = () => {};
  /** The relayed call at word `w` of `words`, or `null` for a failed write's notice, which it handles. */
  const relayed = (w: number, token: number): RelayedCall | null => {
    const ctx = words[w + 1];
    const index = Number(words[w + 2] & 0xffn);
    if (index === FAILED_WRITE) {
      try {
        onFailure(ctx, Number(words[w + 4]));
      } catch {
        // onFailure reports; should it throw, the rest of the batch must still be given out.
      } finally {
        fn.milter_shim_reply(token, 0);
      }
      return null;
    }
    const kinds = ARGUMENT_KINDS[index];
    const args: unknown[] = [ctx];
    for (let i = 0; i < kinds.length; i++) {
      const word = words[w + 4 + i];
      args.push(kinds[i] ? (word === 0n ? null : word) : Number(word));
    }
    args.push(token);
    return { token, symbol: CALLBACK_SYMBOLS[index], generation: Number(words[w + 2] >> 8n), args };
  };
  return {
    path,
    abi,
    pendingCode: PENDING,
    wrap(callbacks: readonly CallbackSymbol[]): (bigint | null)[] {
      const mask = callbacks.reduce((bits, symbol) => bits | 1 << CALLBACK_SYMBOLS.indexOf(symbol), 0);
      const out: (bigint | null)[] = new Array(CALLBACKS).fill(null);
      if (fn.milter_shim_wrap(mask, out) !== 0) {
        throw new Error("milter_shim_wrap: the shim's wrappers are already in use (one set per process)");
      }
      // koffi gives a null pointer back as null; 0n would be the same to C.
      return out.map((address) => address === 0n ? null : address);
    },
    reply(token: number, code: number): boolean {
      // A fraction would be truncated on its way to int64_t, onto another token.
      return Number.isSafeInteger(token) && fn.milter_shim_reply(token, code) === 0;
    },
    later(token: number): void {
      if (Number.isSafeInteger(token)) fn.milter_shim_reply(token, PENDING);
    },
    waiting(): number {
      return fn.milter_shim_pending();
    },
    bindWrites(functions, failureText, failed): void {
      if (fn.milter_shim_bind_writes([...functions], failureText) !== 0) {
        throw new Error("milter_shim_bind_writes: the shim refused libmilter's write functions");
      }
      onFailure = failed;
    },
    post(token, write): boolean {
      if (!Number.isSafeInteger(token)) return false;
      const bytes = write.bytes ?? null;
      return fn.milter_shim_post(
        token,
        WRITE_KINDS[write.kind],
        write.index ?? 0,
        write.a ?? null,
        write.b ?? null,
        bytes,
        bytes?.length ?? 0,
      ) === 0;
    },
    bindPipeline(bell, boundBytes, getsymval, macros, always): void {
      // Kept for the life of the process: the pump thread rings it until exit.
      const registered = koffi.register(bell, types.bell);
      const mask = always.reduce((bits, symbol) => bits | 1 << QUEUED_INDEX[symbol], 0);
      const rc = fn.milter_shim_bind_pipeline(registered, boundBytes, getsymval, [...macros], macros.length, mask);
      if (rc !== 0) {
        koffi.unregister(registered);
        throw new Error(`milter_shim_bind_pipeline: error ${errnoName(rc)}`);
      }
    },
    pipeline(ctx, callbacks): boolean {
      const mask = callbacks.reduce((bits, symbol) => bits | 1 << QUEUED_INDEX[symbol], 0);
      return fn.milter_shim_pipeline(ctx, mask) === 0;
    },
    take(): TakenCall[] {
      const n = fn.milter_shim_take_batch(words, TAKE_BATCH);
      const calls: TakenCall[] = [];
      for (let i = 0, w = 0; i < n; i++, w += CALL_WORDS) {
        const token = Number(words[w + 3]);
        if (token !== 0) {
          const call = relayed(w, token);
          if (call !== null) calls.push(call);
          continue;
        }
        outstanding.add(words[w]);
        calls.push({
          address: words[w],
          ctx: words[w + 1],
          symbol: QUEUED_SYMBOL[Number(words[w + 2] & 0xffn)],
          generation: Number(words[w + 2] >> 8n),
          a: words[w + 4] || null,
          b: words[w + 5] || null,
          bytes: words[w + 6] || null,
          len: Number(words[w + 7]),
        });
      }
      return calls;
    },
    done(calls): void {
      let n = 0;
      for (const call of calls) {
        if (!outstanding.delete(call.address)) continue;
        addresses[n++] = call.address;
        if (n === TAKE_BATCH) {
          fn.milter_shim_done_batch(addresses, n);
          n = 0;
        }
      }
      if (n > 0) fn.milter_shim_done_batch(addresses, n);
    },
    symval(call, index): string | null {
      return fn.milter_shim_symval(call.address, index);
    },
    pipelineStats(): PipelineStats {
      return Object.fromEntries(
        PIPELINE_STATS.map((name, which) => [name, Number(fn.milter_shim_pipeline_stat(which))]),
      ) as unknown as PipelineStats;
    },
    wrapperCalls(): number[] {
      return CALLBACK_SYMBOLS.map((_, i) => Number(fn.milter_shim_pipeline_stat(PIPELINE_STATS.length + i)));
    },
    negotiateItself(flags: number, setpriv: bigint, getpriv: bigint): void {
      if (fn.milter_shim_negotiate_itself(flags, setpriv, getpriv) !== 0) {
        throw new Error("milter_shim_negotiate_itself refused (called twice, or a function is missing)");
      }
    },
    generation(g: Generation): boolean {
      const relay = g.relay.reduce((bits, symbol) => bits | 1 << CALLBACK_SYMBOLS.indexOf(symbol), 0);
      const queued = g.queued.reduce((bits, symbol) => bits | 1 << QUEUED_INDEX[symbol], 0);
      return fn.milter_shim_generation(g.id, g.flags, g.absent, relay >>> 0, queued, g.itself ? 1 : 0) === 0;
    },
    stamp: (ctx, id) => fn.milter_shim_stamp(ctx, id) === 0,
    live: (id) => fn.milter_shim_live(id) !== 0,
    refuseNew: () => fn.milter_shim_refuse_new(),
    admitted: () => fn.milter_shim_admitted(),
    startMain(mainFn: bigint, done: (rc: number) => void): void {
      startOnThread(fn.milter_shim_start_main, "milter_shim_start_main", mainFn, done);
    },
    runMilter(mainFn: bigint, done: (rc: number) => void): void {
      startOnThread(fn.milter_shim_run_milter, "milter_shim_run_milter", mainFn, done);
    },
    runListener(listener: bigint, listen: Listen, done: (rc: number) => void): void {
      const { conn, dbg, name, version, flags, timeout, backlog } = listen;
      const start = (address: bigint, registered: unknown): number =>
        fn.milter_shim_run_listener(address, conn, dbg, name, version, flags, timeout, backlog, registered);
      startOnThread(start, "milter_shim_run_listener", listener, done);
    },
    exit(code: number): void {
      fn.milter_shim_exit(code);
    },
  };

  /** {@linkcode Shim.startMain} through `start`, the shim's function named `name`. */
  function startOnThread(
    start: (mainFn: bigint, done: unknown) => number,
    name: string,
    mainFn: bigint,
    done: (rc: number) => void,
  ): void {
    // A timer holds the event loop open until done runs: nothing else
    // would while the thread runs, and a loop that ran dry would end the
    // process with the milter in it (and koffi's relay of done with it).
    const keepAlive = setInterval(() => {}, 1 << 30);
    const release = (): void => {
      koffi.unregister(registered);
      clearInterval(keepAlive);
    };
    // Runs on the JS thread while the shim's thread waits for it to
    // return. The slot is released, and done called, from a fresh task:
    // after koffi is through with the slot, and where done may throw like
    // any other JS code.
    const relay = (rc: number): void => {
      setTimeout(() => {
        release();
        done(rc);
      }, 0);
    };
    let registered: bigint;
    try {
      registered = koffi.register(relay, types.done);
    } catch (error) {
      clearInterval(keepAlive);
      throw error;
    }
    let rc: number;
    try {
      rc = start(mainFn, registered);
    } catch (error) {
      release();
      throw error;
    }
    if (rc !== 0) {
      release();
      throw new Error(`${name}: cannot start the thread (error ${errnoName(rc)})`);
    }
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** `11 (EAGAIN)` for Linux's error numbers that pthread_create returns. */
function errnoName(code: number): string {
  const names: Record<number, string> = { 1: "EPERM", 11: "EAGAIN", 12: "ENOMEM", 16: "EBUSY", 22: "EINVAL" };
  return names[code] ? `${code} (${names[code]})` : String(code);
}
