/**
 * One log entry per message: what the binding notes of each message while
 * its callbacks run (sender, recipients, the answer that decided it, the
 * reply set, a quarantine, the time the filter took), and the entry written
 * when the message ends: at end of message, abort, or the connection closing
 * with the message open. A connection that ends without a message gets one
 * entry too. Off (and free) unless `main({ log })` turns it on.
 *
 * @module
 */

import { SMFIS_ACCEPT, SMFIS_DISCARD, SMFIS_REJECT, SMFIS_SKIP, SMFIS_TEMPFAIL } from "../ffi/constants.ts";
import { getsymval } from "./actions.ts";
import { failureReply } from "./answers.ts";
import type { SockAddr } from "./convert.ts";
import type { Session } from "./ctx.ts";
import type { CallbackName } from "./stages.ts";
import { STAGES } from "./stages.ts";
import type { FailureKind, Verdict } from "./stats.ts";

/** One line of the log: a message's outcome, or a connection's that had no message. */
export interface LogEntry {
  /** `"message"`, or `"connection"` for a connection that ended without a message. */
  readonly kind: "message" | "connection";
  /** The filter that handled it. */
  readonly filter: string;
  /** The connection's context id (`Ctx.id`), to tell lines of one connection. */
  readonly connection: number;
  /** The MTA's queue id (macro `i`), `null` when the MTA sent none (yet). */
  readonly queueId: string | null;
  /** The client's address: connect's, else the macro `{client_addr}`; `null` when unknown. */
  readonly client: string | null;
  /**
   * The envelope sender (with its `<>`): envfrom's, or the macro `{mail_addr}`
   * (which Postfix and Sendmail send with MAIL); `null` when neither came.
   */
  readonly sender: string | null;
  /** How many recipients reached the filter (RCPT TO). */
  readonly recipients: number;
  /**
   * What decided the message: a callback's answer (`continue` at end of
   * message: passed on), `quarantine`, or `aborted` (the MTA aborted it, or
   * the connection closed, before anything was decided).
   */
  readonly verdict: Verdict | "aborted";
  /** The stage whose answer decided it, `null` for `aborted`. */
  readonly stage: CallbackName | null;
  /** The reply the filter set for that answer (`550 5.7.1 …`), or the binding's 451 on failure; `null`: the MTA's own. */
  readonly reply: string | null;
  /** Why the binding answered Tempfail itself (a failed callback), `null` otherwise. */
  readonly failure: FailureKind | null;
  /** The quarantine reason, `null` when not quarantined. */
  readonly quarantine: string | null;
  /** Seconds the filter's callbacks took for this message (from each call to its answer). */
  readonly duration: number;
}

/** Where entries go: the logger of `main({ log })`, `null` when off. */
let logger: ((entry: LogEntry) => void) | null = null;

/** Turns the entries on (`fn`) or off (`null`). */
export function logTo(fn: ((entry: LogEntry) => void) | null): void {
  logger = fn;
}

/** Whether entries are being written: the binding then observes what it otherwise need not. */
export function logging(): boolean {
  return logger !== null;
}

/** A message being followed. */
interface Message {
  sender: string | null;
  recipients: number;
  verdict: Verdict | null;
  stage: CallbackName | null;
  reply: string | null;
  failure: FailureKind | null;
  quarantine: string | null;
  duration: number;
  queueId: string | null;
}

/** A connection being followed. */
interface Connection {
  client: string | null;
  message: Message | null;
  /** Entries written for its messages so far. */
  written: number;
  /** What decided the connection itself (connect, helo), for its entry when no message came. */
  decided: Pick<Message, "verdict" | "stage" | "reply" | "failure"> | null;
  /** The reply set by the running callback, not yet tied to its answer. */
  reply: string | null;
  duration: number;
}

const connections = new WeakMap<Session, Connection>();

function connectionOf(session: Session): Connection {
  let c = connections.get(session);
  if (c === undefined) {
    connections.set(session, c = { client: null, message: null, written: 0, decided: null, reply: null, duration: 0 });
  }
  return c;
}

function newMessage(): Message {
  return {
    sender: null,
    recipients: 0,
    verdict: null,
    stage: null,
    reply: null,
    failure: null,
    quarantine: null,
    duration: 0,
    queueId: null,
  };
}

/** A macro's value in the running call, `null` when unsent or unreadable there. */
function macro(session: Session, name: string): string | null {
  try {
    return getsymval(session.ctx, name);
  } catch {
    return null;
  }
}

/** The address part of a `SockAddr`. */
function addressOf(addr: SockAddr | null): string | null {
  if (addr === null) return null;
  return "address" in addr ? addr.address : "path" in addr ? addr.path : null;
}

/**
 * Notes what a call's arguments say of the message or connection, before
 * its callback runs: connect's address, envfrom's sender (starting a new
 * message), envrcpt's recipient.
 */
export function noteCall(session: Session, callback: CallbackName, args: readonly unknown[]): void {
  if (logger === null) return;
  const c = connectionOf(session);
  if (callback === "connect") c.client = addressOf(args[1] as SockAddr | null) ?? clientOf(session);
  else if (callback === "envfrom") {
    if (c.message !== null) write(session, c, "aborted", null); // ended with nothing the binding saw
    c.message = newMessage();
    c.message.sender = typeof args[0] === "string" ? args[0] : null;
  } else if (callback === "envrcpt") (c.message ??= newMessage()).recipients++;
}

/** The running callback set `reply` (setreply or setmlreply: its first line) for its answer. */
export function noteReply(session: Session, reply: string): void {
  if (logger !== null) connectionOf(session).reply = reply;
}

/** The verdict of each code a decision can have. */
const DECISIONS: Readonly<Record<number, Verdict>> = {
  [SMFIS_REJECT]: "reject",
  [SMFIS_DISCARD]: "discard",
  [SMFIS_ACCEPT]: "accept",
  [SMFIS_TEMPFAIL]: "tempfail",
  [SMFIS_SKIP]: "continue",
};

/**
 * A call of `callback` was answered `code` after `seconds` (`failure` when
 * the binding answered for a failed callback; `quarantined`, the reason,
 * when the call quarantined the message): notes what decided the message or
 * connection, and writes the entry of a message that ended here. Runs while
 * the call's Ctx is still usable.
 */
export function noteAnswer(
  session: Session,
  callback: CallbackName,
  code: number,
  seconds: number,
  failure: FailureKind | null,
  quarantined: string | null,
): void {
  if (logger === null) return;
  const c = connectionOf(session);
  const reply = failure !== null ? `451 4.3.0 ${failureReply(session.filter.name)}` : c.reply;
  c.reply = null;
  c.duration += seconds;
  const scope = STAGES[callback].failure;
  const decided = DECISIONS[code];
  if (scope === "connection") {
    if (decided !== undefined) c.decided ??= { verdict: decided, stage: callback, reply, failure };
    return;
  }
  if (scope === "ignored") {
    if (callback === "abort" && c.message !== null) write(session, c, "aborted", null);
    if (callback === "close") closeConnection(session, c);
    return;
  }
  const m = c.message ??= newMessage();
  m.duration += seconds;
  m.quarantine = quarantined ?? m.quarantine;
  m.queueId = macro(session, "i") ?? m.queueId;
  if (scope === "message" && decided !== undefined && m.verdict === null) {
    Object.assign(m, { verdict: decided, stage: callback, reply, failure });
  }
  if (callback === "eom") {
    const verdict = m.verdict ?? (m.quarantine !== null ? "quarantine" : "continue");
    write(session, c, verdict, m.verdict === null ? "eom" : m.stage);
  }
}

/** The connection closes: its open message ends aborted, and a connection without messages gets its entry. */
function closeConnection(session: Session, c: Connection): void {
  if (c.message !== null) write(session, c, "aborted", null);
  if (c.written > 0) return;
  const d = c.decided;
  emit(session, c, {
    kind: "connection",
    queueId: null,
    sender: null,
    recipients: 0,
    verdict: d?.verdict ?? "continue",
    stage: d?.stage ?? null,
    reply: d?.reply ?? null,
    failure: d?.failure ?? null,
    quarantine: null,
    duration: c.duration,
  });
}

/** Writes the entry of the connection's open message: decided by its verdict, else `fallback` at `stage`. */
function write(session: Session, c: Connection, fallback: Verdict | "aborted", stage: CallbackName | null): void {
  const m = c.message!;
  c.message = null;
  c.written++;
  const decided = m.verdict !== null;
  emit(session, c, {
    kind: "message",
    queueId: m.queueId ?? macro(session, "i"),
    sender: m.sender ?? bracket(macro(session, "{mail_addr}")),
    recipients: m.recipients,
    verdict: decided ? m.verdict! : fallback,
    stage: decided ? m.stage : stage,
    reply: decided ? m.reply : null,
    failure: decided ? m.failure : null,
    quarantine: m.quarantine,
    duration: m.duration,
  });
}

/** `{mail_addr}` as envfrom gives the sender: in angle brackets (`<>` for the null sender). */
function bracket(address: string | null): string | null {
  return address === null ? null : `<${address}>`;
}

/**
 * The client's address from the macros: `{client_addr}`, or the address in
 * `_` (`name [address]`, which Postfix and Sendmail send at connect by
 * default); `null` without either.
 */
function clientOf(session: Session): string | null {
  const underscore = macro(session, "_");
  const found = underscore === null ? null : /\[(?:IPv6:)?([^\]]+)\]/i.exec(underscore);
  return macro(session, "{client_addr}") ?? (found === null ? null : found[1]);
}

function emit(
  session: Session,
  c: Connection,
  entry: Omit<LogEntry, "filter" | "connection" | "client">,
): void {
  c.client ??= clientOf(session);
  const full: LogEntry = { filter: session.filter.name, connection: session.ctx.id, client: c.client, ...entry };
  try {
    logger?.(full);
  } catch {
    // a logger that throws loses its line, never the mail
  }
}

/** Escapes a logfmt value: bare when it needs no quotes, else quoted with `"` and `\` escaped. */
function logfmtValue(value: unknown): string {
  const text = value === null ? "" : String(value);
  return /^[^\s"=\\]+$/.test(text) ? text : JSON.stringify(text);
}

/** An entry as one logfmt line (`key=value` pairs, as journald and Loki read them). */
export function logfmt(entry: LogEntry): string {
  const pairs: [string, unknown][] = [
    ["milter", entry.kind],
    ["filter", entry.filter],
    ["queue_id", entry.queueId],
    ["client", entry.client],
    ["from", entry.sender],
    ["rcpts", entry.recipients],
    ["verdict", entry.verdict],
    ["stage", entry.stage],
    ["reply", entry.reply],
    ["failure", entry.failure],
    ["quarantine", entry.quarantine],
    ["duration", entry.duration.toFixed(6)],
    ["conn", entry.connection],
  ];
  return pairs.filter(([, v]) => v !== null).map(([k, v]) => `${k}=${logfmtValue(v)}`).join(" ");
}
