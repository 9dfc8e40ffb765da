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
 * @module
 */

import type { Pointer } from "../ffi/memory.ts";
import type { QueuedCall } from "../ffi/shim.ts";
import { describe, fail } from "./error.ts";

/** The callbacks of a filter, in `struct smfiDesc` order. */
export const CALLBACK_NAMES = [
  "connect",
  "helo",
  "envfrom",
  "envrcpt",
  "header",
  "eoh",
  "body",
  "eom",
  "abort",
  "close",
  "unknown",
  "data",
  "negotiate",
] as const;

/** The name of a callback of a filter. */
export type CallbackName = (typeof CALLBACK_NAMES)[number];

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

/** What the binding keeps per connection. */
export interface Session {
  readonly ptr: Pointer;
  readonly ctx: Ctx;
  /** The callback running for this connection now, or `null` between callbacks. */
  callback: CallbackName | null;
  /** Set once `close` has returned (or main has ended); the pointer is then dead. */
  closed: boolean;
  /** The private data of `setpriv`, `null` when none. */
  priv: unknown;
  /** Action flags the filter declared for this connection (registration or negotiate). */
  actions: number;
  /** The C string arguments of the running callback, valid only while it runs (for `rawargs`). */
  raw: readonly Pointer[];
  /** The `NR_*` step bits negotiated for this connection: stages the MTA expects no reply to. */
  noReply: number;
  /**
   * A failure at a no-reply stage, still to be answered (Tempfail) at the
   * next stage that replies: for the rest of the connection or of the message.
   */
  failed: "connection" | "message" | null;
  /** While the running callback's Promise is pending: answers it with Tempfail at once (when libmilter stops). */
  pending: (() => void) | null;
  /** The shim's token of the running callback, for writes done by its own thread; -1 when there is none. */
  token: number;
  /**
   * The running callback's queued call when it is pipelined: the shim
   * answered libmilter at once and libmilter's thread has moved on, so
   * nothing may reach libmilter for this connection (macros come from what
   * the shim captured for the call); `null` otherwise.
   */
  queued: QueuedCall | null;
  /**
   * While one of the connection's pipelined calls runs (or its Promise is
   * pending): the calls queued after it, run in order once it is through;
   * `null` while none runs.
   */
  backlog: QueuedCall[] | null;
}

const sessions = new Map<Pointer, Session>();
const byCtx = new WeakMap<Ctx, Session>();
let nextId = 1;
let sessionsChanged: (() => void) | null = null;

/** Marks `callback` as running for the connection at `ptr`, opening its session on first sight. */
export function enter(ptr: Pointer, callback: CallbackName, actions: number): Session {
  let session = sessions.get(ptr);
  if (!session) {
    session = {
      ptr,
      ctx: new Ctx(TOKEN, nextId++),
      callback: null,
      closed: false,
      priv: null,
      actions,
      raw: [],
      noReply: 0,
      failed: null,
      pending: null,
      token: -1,
      queued: null,
      backlog: null,
    };
    sessions.set(ptr, session);
    byCtx.set(session.ctx, session);
  }
  session.callback = callback;
  return session;
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
  session.callback = null;
  session.raw = [];
  session.token = -1;
  session.queued = null;
}

/** Ends a session: its Ctx becomes unusable and its private data is dropped. */
export function release(session: Session): void {
  session.closed = true;
  session.priv = null;
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
  if (session.callback === null) {
    fail(
      fn,
      `${session.ctx} is used outside its callbacks (from a timer, a promise or another connection's callback); ` +
        "contexts are only valid while one of their own callbacks runs, or its Promise is pending",
    );
  }
  return session;
}
