/**
 * The one relay: every call into JS through the shim comes from the bell
 * the shim rings, in batches. A call libmilter's thread waits for is run
 * through its trampoline and answered, at once or when its Promise settles.
 * At a stage a connection negotiated as no reply (header, eoh, body), and at
 * abort and close where the filter has no callback (libmilter ignores their
 * answers), the shim answers libmilter at once and queues the call: queued
 * calls run in order per connection.
 *
 * @module
 */

import { SMFIS_TEMPFAIL } from "../ffi/constants.ts";
import type { Relay } from "../ffi/load.ts";
import type { Pointer } from "../ffi/memory.ts";
import {
  PIPELINED_SYMBOLS,
  type PipelineStats,
  QUEUED_ALWAYS_SYMBOLS,
  type QueuedCall,
  type RelayedCall,
  type TakenCall,
} from "../ffi/shim.ts";
import { silent } from "./answers.ts";
import { macroKey } from "./convert.ts";
import type { Session } from "./ctx.ts";
import { reportInternal } from "./failure.ts";
import { lifecycle } from "./lifecycle.ts";
import { native } from "./native.ts";
import { registered, type Registration } from "./registration.ts";
import { stageOf } from "./stages.ts";

/**
 * How the bell's calls run (`trampolines.ts`): `queued`, one queued call
 * through its stage's callback, and `relayed`, one call libmilter's thread
 * waits for; each returns the shim's pending code when it answers later.
 * Both total.
 */
export interface Runners {
  readonly queued: (call: QueuedCall) => number;
  readonly relayed: (call: RelayedCall) => number;
}

const notStarted = (): never => {
  throw new Error("milter binding: the bell runs no call before startPipeline");
};
let runners: Runners = { queued: notStarted, relayed: notStarted };

/**
 * @internal What the pipeline holds and has held, `null` when it is off:
 * for tests and monitoring.
 */
export function pipelineStats(): PipelineStats | null {
  return lifecycle.pipelining ? native("main").relay.pipelineStats() : null;
}

/**
 * Starts the bell for the process, before main starts libmilter (through
 * the shim, every call into JS comes from it), and pipelining: at a stage
 * negotiated as no reply (header, eoh, body), the shim answers libmilter at
 * once, and the filter's callback runs when the JS thread gets to it, in
 * order with the connection's other callbacks. Pipelining is off without
 * the shim, or when `bytes` (the bound per connection) is 0. The `macros`
 * are captured for each pipelined call, for getsymval. abort and close,
 * where the filter has no callback of its own, are queued for every
 * connection: the binding runs them only to end the message or the
 * connection, and libmilter ignores their answers.
 *
 * @returns whether pipelining is on.
 * @throws {Error} when the shim cannot start its thread.
 */
export function startPipeline(bytes: number, macros: readonly string[], run: Runners): boolean {
  const relay = native("main").relay;
  runners = run;
  // abort and close without a callback of the filter's: no user code waits on libmilter's thread there.
  const always = QUEUED_ALWAYS_SYMBOLS.filter((symbol) => registered().callbacks[stageOf(symbol).name] === undefined);
  // The bound applies to queued calls: with pipelining off, abort and close only.
  const captured = relay.startPipeline(() => ring(relay), Math.max(bytes, 1), bytes === 0 ? [] : macros, always);
  if (captured === null || bytes === 0) return false;
  lifecycle.pipelineMacros = new Map(captured.map((name, index) => [macroKey(name), index]));
  lifecycle.pipelining = true;
  return true;
}

/**
 * Tells the shim which stages of this connection to pipeline: those it
 * negotiated as no reply that the filter has a callback for, among header,
 * eoh and body. Every negotiate says it, so that a context address a later
 * connection reuses never inherits an earlier connection's choice. Should
 * the shim refuse (memory), the stages run while libmilter waits, as
 * without pipelining.
 */
export function pipelineStages(session: Session, r: Registration): void {
  if (!lifecycle.pipelining) return;
  const symbols = PIPELINED_SYMBOLS.filter((symbol) => {
    const { name } = stageOf(symbol);
    return r.callbacks[name] !== undefined && silent(session, name);
  });
  native("negotiate").relay.pipeline(session.ptr, symbols);
}

/**
 * The calls queued behind a connection's call that is still running (its
 * Promise pending), by context address: run in order once it is through. A
 * connection with no entry has no call running. Keyed by address, not by
 * session: a queued close may still be ahead of the calls of a new
 * connection libmilter gave the same address, and those must run after it.
 */
const backlogs = new Map<Pointer, QueuedCall[]>();

/**
 * The bell the shim rings while calls wait for JS: takes the waiting calls
 * in batches, oldest first, up to {@linkcode RING_BATCHES} batches: calls
 * queued while JS runs a batch come without a ring of their own (a ring
 * costs a wake-up of the JS thread and of the thread that rang).
 */
function ring(relay: Relay): void {
  for (let batch = 0; batch < RING_BATCHES; batch++) {
    const calls = relay.take();
    if (calls.length === 0) return;
    runBatch(relay, calls);
  }
}

/** The most batches one ring takes. */
const RING_BATCHES = 4;

/**
 * Runs one batch of calls. A call libmilter's thread waits for is answered
 * (or marked answered later). A connection whose earlier queued call is
 * still running (its Promise pending) keeps a new queued one in its
 * backlog. The queued calls that are through go back to the shim together,
 * at the end of the batch.
 */
function runBatch(relay: Relay, calls: readonly TakenCall[]): void {
  const finished: QueuedCall[] = [];
  for (const call of calls) {
    try {
      if ("token" in call) answer(relay, call);
      else {
        const backlog = backlogs.get(call.ctx);
        if (backlog !== undefined) backlog.push(call);
        else {
          backlogs.set(call.ctx, []);
          runQueue(call.ctx, call, finished);
        }
      }
    } catch (error) {
      // A bug of the binding's own: reported, and no call of the batch left without its answer.
      reportInternal("the pipeline's bell", error);
      if ("token" in call) relay.reply(call.token, SMFIS_TEMPFAIL);
    }
  }
  relay.done(finished);
}

/** Runs a call libmilter's thread waits for and answers it, or marks it answered later. */
function answer(relay: Relay, call: RelayedCall): void {
  const code = runners.relayed(call);
  if (code === relay.pendingCode) relay.later(call.token);
  else relay.reply(call.token, code);
}

/**
 * Runs a connection's queued calls from `call` on, in order, until one
 * answers with a Promise (its settlement goes on from there, see
 * {@linkcode queueDone}) or none is left. Each call through is added to
 * `finished`, for the caller to give back to the shim, which lets the
 * connection's next replying stage go on.
 */
function runQueue(ctx: Pointer, call: QueuedCall | undefined, finished: QueuedCall[]): void {
  const pending = native("main").relay.pendingCode;
  while (call !== undefined) {
    // After main ended (every session released), queued calls are only given back.
    if (lifecycle.phase !== "stopped" && runners.queued(call) === pending) return;
    finished.push(call);
    call = backlogs.get(ctx)?.shift();
  }
  backlogs.delete(ctx);
}

/** A queued call's Promise has settled: give the call back, and run the connection's next ones. */
export function queueDone(call: QueuedCall): void {
  const finished = [call];
  try {
    runQueue(call.ctx, backlogs.get(call.ctx)?.shift(), finished);
  } finally {
    native("main").relay.done(finished);
  }
}
