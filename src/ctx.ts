/**
 * Connection contexts: one {@linkcode Ctx} per MTA connection, its lifetime,
 * and the checks that keep a stale or borrowed context from reaching C.
 *
 * libmilter hands every callback the address of its `SMFICTX`, valid until
 * the connection's `close` callback returns, and its action functions are
 * safe only while libmilter's thread waits inside a callback. So a Ctx is
 * usable exactly while one of its own callbacks runs on the JS thread;
 * anything else raises {@linkcode MilterError} before C is called.
 *
 * The Ctx is one object per connection, but each use belongs to one call of
 * one callback (an {@linkcode Invocation}): the callback's code runs in an
 * async context (`AsyncLocalStorage`) that names its invocation, and every
 * timer, Promise reaction and await continuation it starts carries that
 * context along. A use whose context names an invocation that is over (a
 * Promise still running after its callback timed out, a timer set by an
 * earlier callback) is refused, whatever callback the connection runs by
 * then, and reported.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";
import type { Pointer } from "../ffi/memory.ts";
import type { QueuedCall } from "../ffi/shim.ts";
import type { Registration } from "./registration.ts";
import { describe, fail, milterError } from "./error.ts";
import { report } from "./report.ts";
import type { CallbackName } from "./stages.ts";

const TOKEN = Symbol("Ctx");

/**
 * A milter context: the handle of one MTA connection, the same object in
 * every callback of that connection. It is opaque; pass it to this module's
 * functions while one of its callbacks runs.
 */
export class Ctx {
  /** A number identifying the connection in logs; unique within the process. */
  readonly id: number;

  /** @internal Contexts are created by the binding, one per connection. */
  constructor(token: symbol, id: number) {
    if (token !== TOKEN) throw new TypeError("Milter.Ctx cannot be constructed; contexts are passed to callbacks");
    this.id = id;
    Object.freeze(this);
  }

  /** `Milter.Ctx#<id>`. */
  toString(): string {
    return `Milter.Ctx#${this.id}`;
  }
}

/** One call of one callback of a connection: its Ctx's uses are valid until it is over. */
export interface Invocation {
  readonly session: Session;
  readonly callback: CallbackName;
  /** The shim's token of the call, for writes done by its own thread; -1 when there is none. */
  readonly token: number;
  /**
   * The call's queued record when it is pipelined: the shim answered
   * libmilter at once and libmilter's thread has moved on, so nothing may
   * reach libmilter for this connection (macros come from what the shim
   * captured for the call); `null` otherwise.
   */
  readonly queued: QueuedCall | null;
  /** The C string arguments of the call, valid only while it runs (for `rawargs`). */
  raw: readonly Pointer[];
  /** While the call's Promise is pending: answers it with Tempfail at once (when libmilter stops). */
  abandon: (() => void) | null;
  /** Set when the callback has answered (its Promise settled or timed out): its code's uses are refused. */
  over: boolean;
}

/**
 * A failure at a no-reply stage, still to be answered (Tempfail) at the
 * next stage that replies: for the rest of the connection or of the message.
 */
export type OwedScope = "connection" | "message";

/**
 * What the binding keeps per connection. Its state changes only through its
 * transitions: a call {@linkcode Session.enter}s and {@linkcode Session.leave}s,
 * negotiation fixes what was {@linkcode Session.negotiated}, a failure at a
 * no-reply stage is {@linkcode Session.owe}d until the message or connection
 * ends, and the session is {@linkcode Session.release}d once, at close.
 */
export class Session {
  readonly ptr: Pointer;
  readonly ctx: Ctx;
  /** The filter the connection started with (register's, or one installed by `replace` since): it keeps it to the end. */
  readonly filter: Registration;
  /** The private data of `setpriv`, `null` when none. */
  priv: unknown = null;
  #invocation: Invocation | null = null;
  #closed = false;
  #actions: number;
  #noReply = 0;
  #owed: OwedScope | null = null;
  #quarantined: string | null = null;

  /** @internal Opened by {@linkcode enter}. */
  constructor(ptr: Pointer, filter: Registration) {
    this.ptr = ptr;
    this.ctx = new Ctx(TOKEN, nextId++);
    this.filter = filter;
    this.#actions = filter.flags;
  }

  /** The call of a callback running for this connection now, `null` between callbacks. */
  get invocation(): Invocation | null {
    return this.#invocation;
  }

  /** Set once `close` has returned (or main has ended); the pointer is then dead. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Action flags the filter declared for this connection (registration or negotiate). */
  get actions(): number {
    return this.#actions;
  }

  /** The `NR_*` step bits negotiated for this connection: stages the MTA expects no reply to. */
  get noReply(): number {
    return this.#noReply;
  }

  /** A failure at a no-reply stage still to be answered, and for how long; `null` when none is. */
  get owed(): OwedScope | null {
    return this.#owed;
  }

  /** The running call's queued record when it is pipelined, `null` otherwise (see {@linkcode Invocation.queued}). */
  get queued(): QueuedCall | null {
    return this.#invocation?.queued ?? null;
  }

  /** Begins a call of `callback`: the Ctx is usable until {@linkcode leave}. */
  enter(callback: CallbackName, token: number, queued: QueuedCall | null): Invocation {
    this.#invocation = { session: this, callback, token, queued, raw: [], abandon: null, over: false };
    return this.#invocation;
  }

  /** Ends the running call: the Ctx's uses from its code are refused from now on. */
  leave(): void {
    if (this.#invocation !== null) this.#invocation.over = true;
    this.#invocation = null;
  }

  /** What negotiation fixed for the connection: its action flags and no-reply steps. */
  negotiated(actions: number, noReply: number): void {
    this.#actions = actions;
    this.#noReply = noReply;
  }

  /** Owes a failure for `scope`; one owed for the connection stays so. */
  owe(scope: OwedScope): void {
    if (this.#owed !== "connection") this.#owed = scope;
  }

  /** The message ended: a failure owed for it is forgotten. */
  forgetMessage(): void {
    if (this.#owed === "message") this.#owed = null;
  }

  /** The running end of message quarantined the message, for `reason`. */
  quarantine(reason: string): void {
    this.#quarantined = reason;
  }

  /** The reason the message was quarantined for since last asked, `null` when it was not. */
  takeQuarantined(): string | null {
    const reason = this.#quarantined;
    this.#quarantined = null;
    return reason;
  }

  /** Ends the session for good: its Ctx becomes unusable and its private data is dropped. */
  release(): void {
    this.#closed = true;
    this.priv = null;
  }
}

const sessions = new Map<Pointer, Session>();
const byCtx = new WeakMap<Ctx, Session>();
let nextId = 1;
let sessionsChanged: (() => void) | null = null;

/**
 * Marks `callback` as running for the connection at `ptr`, opening its
 * session on first sight on `filter`; `token` and `queued` as
 * {@linkcode Invocation} says.
 *
 * @returns the call begun.
 */
export function enter(
  ptr: Pointer,
  callback: CallbackName,
  filter: Registration,
  token = -1,
  queued: QueuedCall | null = null,
): Invocation {
  let session = sessions.get(ptr);
  if (!session) {
    session = new Session(ptr, filter);
    sessions.set(ptr, session);
    byCtx.set(session.ctx, session);
  }
  return session.enter(callback, token, queued);
}

/** The async context of a callback's code: the invocation its Ctx uses belong to. */
const invocations = new AsyncLocalStorage<Invocation>();

/**
 * Runs `fn` (a callback's code) in the async context of the session's
 * current invocation: what it starts (timers, Promise reactions, awaits)
 * keeps that context, so {@linkcode active} tells its later uses of the Ctx.
 */
export function runInvocation<T>(session: Session, fn: () => T): T {
  return session.invocation === null ? fn() : invocations.run(session.invocation, fn);
}

/** The open session of the connection at `ptr`, if any. */
export function sessionAt(ptr: Pointer): Session | undefined {
  return sessions.get(ptr);
}

/** Whether the connection at `ptr` has an open session (one of its callbacks has run). */
export function isOpen(ptr: Pointer): boolean {
  return sessions.has(ptr);
}

/** Marks the callback of `session` as returned. */
export function leave(session: Session): void {
  session.leave();
}

/** Ends a session: its Ctx becomes unusable and its private data is dropped. */
export function release(session: Session): void {
  session.release();
  sessions.delete(session.ptr);
  sessionsChanged?.();
}

/** The sessions open now. */
export function allSessions(): Iterable<Session> {
  return sessions.values();
}

/** Ends every session still open (libmilter frees their contexts when main ends). */
export function releaseAll(): void {
  for (const session of [...sessions.values()]) release(session);
}

/** Whether an open session runs on `filter`. */
export function usesFilter(filter: Registration): boolean {
  for (const session of sessions.values()) if (session.filter === filter) return true;
  return false;
}

/** How many connections have an open session. */
export function openSessions(): number {
  return sessions.size;
}

/** Calls `listener` whenever a session ends (`null` to stop). */
export function onSessionEnd(listener: (() => void) | null): void {
  sessionsChanged = listener;
}

/**
 * The session of `ctx`, checked to be usable now: a real context, whose
 * connection is open, with one of its callbacks running.
 *
 * @throws {MilterError} naming `fn` otherwise.
 */
export function active(fn: string, ctx: unknown): Session {
  const session = ctx instanceof Ctx ? byCtx.get(ctx) : undefined;
  if (!session) fail(fn, `expected the Ctx passed to a callback, got ${describe(ctx)}`);
  if (session.closed) fail(fn, `${session.ctx} belongs to a connection that has closed`);
  const from = invocations.getStore();
  if (from !== undefined && from.session === session && from.over) stale(fn, from);
  if (session.invocation === null) {
    fail(
      fn,
      `${session.ctx} is used outside its callbacks (from a timer, a promise or another connection's callback); ` +
        "contexts are only valid while one of their own callbacks runs, or its Promise is pending",
    );
  }
  return session;
}

/**
 * Refuses a use of the Ctx by code that its callback left running after
 * it answered, and reports it: the exception may well go nowhere (into an
 * abandoned Promise). The reporter runs outside that code's context.
 *
 * @throws {MilterError} always.
 */
function stale(fn: string, from: Invocation): never {
  const error = milterError(
    fn,
    `${from.session.ctx} is used by code its ${from.callback} callback left running (a Promise that ` +
      "outlived its callback's answer or callbackTimeout, or a timer), after that callback had answered; " +
      "a callback's uses of the Ctx end with its answer",
  );
  invocations.exit(() => report(error, { callback: from.callback, ctx: from.session.ctx, kind: "stale" }));
  throw error;
}
