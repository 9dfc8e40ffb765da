/**
 * The figures the binding keeps about itself, always on: cheap counters
 * updated where a call is answered, and the shim's own counts read when
 * asked. {@linkcode stats} gives them as a typed snapshot; `metrics.ts`
 * renders the same snapshot for Prometheus.
 *
 * @module
 */

import {
  SMFIS_ACCEPT,
  SMFIS_CONTINUE,
  SMFIS_DISCARD,
  SMFIS_NOREPLY,
  SMFIS_REJECT,
  SMFIS_SKIP,
  SMFIS_TEMPFAIL,
} from "../ffi/constants.ts";
import { CALLBACK_SYMBOLS } from "../ffi/symbols.ts";
import { callsIntoJs } from "./calls.ts";
import { openSessions } from "./ctx.ts";
import { lifecycle } from "./lifecycle.ts";
import { native } from "./native.ts";
import { isRegistered, registered } from "./registration.ts";
import { CALLBACK_NAMES, type CallbackName, STAGES } from "./stages.ts";

/**
 * What a callback's answer did to the message (or connection, recipient,
 * command): the `Stat` it answered, in lower case (`No_reply` counts as
 * `continue`), or `quarantine` for an end of message that quarantined it.
 */
export type Verdict = "accept" | "continue" | "reject" | "tempfail" | "discard" | "skip" | "quarantine";

/**
 * Why the binding answered `451 4.3.0` itself (or, for `stale`, refused a
 * use of a Ctx): the kinds of `ErrorInfo.kind`.
 */
export type FailureKind = "exception" | "bad-return" | "timeout" | "stale";

/** Callback durations: how many took at most each bound, as Prometheus's cumulative buckets. */
export interface Histogram {
  /** The upper bounds of the buckets, in seconds, ascending ({@linkcode DURATION_BUCKETS}). */
  readonly bounds: readonly number[];
  /** How many calls took at most `bounds[i]` seconds (cumulative). */
  readonly counts: readonly number[];
  /** The seconds of all calls together. */
  readonly sum: number;
  /** How many calls in all. */
  readonly count: number;
}

/** A snapshot of the figures, from {@linkcode stats}. */
export interface Stats {
  /** The name of the filter connections starting now use. */
  readonly filter: string;
  /** MTA connections. */
  readonly connections: {
    /** Connections the filter serves now. */
    readonly open: number;
    /** Connections the MTA opened, refused ones included. */
    readonly total: number;
    /** Connections refused because the filter was stopping (draining). */
    readonly refused: number;
  };
  /** Messages. */
  readonly messages: {
    /** Messages that reached end of message. */
    readonly total: number;
    /** Messages the MTA aborted (abort callbacks). */
    readonly aborted: number;
  };
  /** Answers of the filter's own callbacks, by stage and verdict (abort, close and negotiate are not verdicts). */
  readonly verdicts: Readonly<Partial<Record<CallbackName, Readonly<Partial<Record<Verdict, number>>>>>>;
  /** Callbacks the binding answered Tempfail 451 4.3.0 for (or whose late use of a Ctx it refused), by stage and kind. */
  readonly failures: Readonly<Partial<Record<CallbackName, Readonly<Partial<Record<FailureKind, number>>>>>>;
  /** Failures of the binding itself (reported as "the binding failed in …"), answered Tempfail. */
  readonly internalFailures: number;
  /** The filter's callbacks. */
  readonly callbacks: {
    /** Callbacks whose Promise is pending now. */
    readonly pending: number;
    /** Time from a callback's call to its answer (its Promise settling), by stage. */
    readonly duration: Readonly<Partial<Record<CallbackName, Histogram>>>;
  };
  /** Pipelined no-reply stages (`main({ pipelineBytes })`). */
  readonly pipeline: {
    /** Bytes of pipelined calls queued now, all connections together. */
    readonly bytes: number;
    /** How many times a connection's queue was full and libmilter waited for room (backpressure). */
    readonly waits: number;
  };
  /** Calls into JS. */
  readonly calls: {
    /** Those libmilter's thread waited for: round trips to the JS thread. */
    readonly relayed: number;
    /** Those it did not wait for (pipelined, or abort and close without a callback). */
    readonly queued: number;
    /** How many times the shim woke the JS thread for them (a wake brings every call waiting). */
    readonly rings: number;
  };
  /** Reloads on SIGHUP (`main({ reload })`). */
  readonly reloads: {
    /** New filters installed. */
    readonly ok: number;
    /** Reloads that threw, rejected or returned no filter: the old filter stayed. */
    readonly failed: number;
  };
}

/** The buckets of every duration histogram, in seconds: 100 µs to 10 s. */
export const DURATION_BUCKETS: readonly number[] = Object.freeze([
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
]);

/** The verdict of each status code a callback can answer. */
const VERDICT_OF: Readonly<Record<number, Verdict>> = {
  [SMFIS_CONTINUE]: "continue",
  [SMFIS_NOREPLY]: "continue",
  [SMFIS_REJECT]: "reject",
  [SMFIS_DISCARD]: "discard",
  [SMFIS_ACCEPT]: "accept",
  [SMFIS_TEMPFAIL]: "tempfail",
  [SMFIS_SKIP]: "skip",
};

/** One stage's duration counts, per bucket (not cumulative) plus one past the last bound. */
interface Durations {
  readonly counts: number[];
  sum: number;
  count: number;
}

const verdicts = new Map<CallbackName, Map<Verdict, number>>();
const failures = new Map<CallbackName, Map<FailureKind, number>>();
const durations = new Map<CallbackName, Durations>();
/** Counts of events without a stage (`session`, `eom` and `abort`: what JS saw, used without the shim). */
const events = {
  internal: 0,
  session: 0,
  eom: 0,
  abort: 0,
  refused: 0,
  reloadOk: 0,
  reloadFailed: 0,
};
let pending = 0;

function bump<K>(map: Map<K, number>, key: K): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

function inner<K, V>(map: Map<K, Map<V, number>>, key: K): Map<V, number> {
  let found = map.get(key);
  if (found === undefined) map.set(key, found = new Map());
  return found;
}

/** Whether answers at `stage` are verdicts on mail (not abort, close or negotiate, whose answers do nothing). */
function decides(stage: CallbackName): boolean {
  return STAGES[stage].failure !== "ignored";
}

/**
 * A callback of the filter's at `stage` was answered after `seconds`: with
 * `code` (`null` when it failed: see {@linkcode countFailure}); `quarantined`
 * when an end of message that let the message go on quarantined it.
 */
export function countCall(stage: CallbackName, seconds: number, code: number | null, quarantined: boolean): void {
  countDuration(stage, seconds);
  if (code === null || !decides(stage)) return;
  const verdict = VERDICT_OF[code];
  if (verdict !== undefined) {
    bump(inner(verdicts, stage), quarantined && verdict === "continue" ? "quarantine" : verdict);
  }
}

/** A callback at `stage` failed as `kind` (reported; answered 451 by the binding, or for `stale` refused). */
export function countFailure(stage: CallbackName, kind: FailureKind): void {
  bump(inner(failures, stage), kind);
}

function countDuration(stage: CallbackName, seconds: number): void {
  let d = durations.get(stage);
  if (d === undefined) {
    durations.set(stage, d = { counts: new Array(DURATION_BUCKETS.length + 1).fill(0), sum: 0, count: 0 });
  }
  let i = 0;
  while (i < DURATION_BUCKETS.length && seconds > DURATION_BUCKETS[i]) i++;
  d.counts[i]++;
  d.sum += seconds;
  d.count++;
}

/** Counts an event without a stage: see {@linkcode Stats}. */
export function countEvent(event: keyof typeof events): void {
  events[event]++;
}

/** A callback's Promise is pending (+1) or settled (-1). */
export function countPending(delta: 1 | -1): void {
  pending += delta;
}

/** The nested counts as a plain object. */
function plain<V extends string>(
  map: Map<CallbackName, Map<V, number>>,
): Partial<Record<CallbackName, Partial<Record<V, number>>>> {
  const out: Partial<Record<CallbackName, Partial<Record<V, number>>>> = {};
  for (const name of CALLBACK_NAMES) {
    const found = map.get(name);
    if (found !== undefined) out[name] = Object.fromEntries(found) as Partial<Record<V, number>>;
  }
  return out;
}

function histogram(d: Durations): Histogram {
  let running = 0;
  const cumulative = DURATION_BUCKETS.map((_, i) => running += d.counts[i]);
  return { bounds: DURATION_BUCKETS, counts: cumulative, sum: d.sum, count: d.count };
}

/** How many times libmilter called `symbol`'s wrapper, from the shim's counts. */
function wrapperCalls(calls: readonly number[], name: CallbackName): number {
  return calls[CALLBACK_SYMBOLS.indexOf(STAGES[name].symbol)];
}

/**
 * The figures the binding keeps, now: connections, messages, verdicts by
 * stage, failures by kind, pending callbacks, callback durations, the
 * pipeline, calls into JS and reloads. Through the native shim, connections
 * and messages are counted where libmilter calls the binding, whether or not
 * the filter has a callback there; without it, only what reaches JS
 * (connections whose negotiate or first callback ran; messages whose eom or
 * abort did). Cheap enough to call on every scrape. This function is an
 * extension: the OCaml module has no equivalent.
 */
export function stats(): Stats {
  const relay = lifecycle.phase === "idle" && !isRegistered() ? null : native("stats").relay;
  const shim = relay?.pipelineStats() ?? null;
  const calls = relay?.wrapperCalls() ?? null;
  const duration: Partial<Record<CallbackName, Histogram>> = {};
  for (const name of CALLBACK_NAMES) {
    const d = durations.get(name);
    if (d !== undefined) duration[name] = histogram(d);
  }
  return {
    filter: isRegistered() ? registered().name : "",
    connections: {
      open: Math.max(openSessions(), relay?.admitted() ?? 0),
      total: calls !== null ? wrapperCalls(calls, "negotiate") : events.session,
      refused: (shim?.refused ?? 0) + events.refused,
    },
    messages: {
      total: calls !== null ? wrapperCalls(calls, "eom") : events.eom,
      aborted: calls !== null ? wrapperCalls(calls, "abort") : events.abort,
    },
    verdicts: plain(verdicts),
    failures: plain(failures),
    internalFailures: events.internal,
    callbacks: { pending, duration },
    pipeline: { bytes: shim?.bytes ?? 0, waits: shim?.waits ?? 0 },
    calls: {
      relayed: shim?.relayed ?? callsIntoJs().roundTrips,
      queued: shim?.calls ?? callsIntoJs().queued,
      rings: shim?.rings ?? 0,
    },
    reloads: { ok: events.reloadOk, failed: events.reloadFailed },
  };
}
