/**
 * Process-level functions: the listening socket, libmilter's settings, and
 * running the filter with {@linkcode main} until {@linkcode stop}.
 *
 * @module
 */

import { chmodSync, statSync, unlinkSync } from "node:fs";
import { MI_SUCCESS } from "../ffi/constants.ts";
import { connectTarget, parseSocketSpec, type SocketSpec, timerDelay } from "./convert.ts";
import { findTcpListener, setTcpNoDelay } from "../ffi/libc.ts";
import type { Libmilter } from "../ffi/load.ts";
import { allSessions, onSessionEnd, openSessions, releaseAll } from "./ctx.ts";
import { check, describe, fail, milterError, requireInt } from "./error.ts";
import { abandonPending } from "./calls.ts";
import { startPipeline } from "./pipeline.ts";
import { isRegistered, registered } from "./registration.ts";
import { type Answer, type Filter, observeMessages, registeredDesc, replace } from "./filter.ts";
import type { Listen } from "../ffi/shim.ts";
import { type LogEntry, logfmt, logTo } from "./messages.ts";
import { serveMetrics } from "./metrics.ts";
import { countEvent } from "./stats.ts";
import { runQueued, runRelayed } from "./trampolines.ts";
import { type FileIdentity, lifecycle } from "./lifecycle.ts";
import { applyConnectionLimit, type FileLimit, RESERVED_ASYNC_CALLS, restoreFileLimit } from "./limits.ts";
import { native } from "./native.ts";
import { connectTo, exitOnFatalErrors, onProgramExit, onStopSignals, writeStderr } from "./runtime.ts";

function beforeMain(fn: string): void {
  if (lifecycle.phase !== "idle") fail(fn, "must be called before main");
}

/**
 * Sets the socket the MTA connects to: `unix:/path/to/socket` (or
 * `local:`), `inet:port@host` or `inet6:port@host`. Bind inet sockets to
 * a loopback or private address: the milter protocol has no
 * authentication. Must be called before {@linkcode main}. Wraps `smfi_setconn`.
 *
 * @throws {MilterError} for a malformed spec, a port outside 1–65535, once the socket is open, or after main.
 */
export function setconn(conn: string): void {
  beforeMain("setconn");
  if (typeof conn !== "string" || conn === "" || conn.includes("\0")) {
    fail(
      "setconn",
      `expected a socket spec such as "inet:8890@127.0.0.1" or "unix:/run/milter.sock", got ${describe(conn)}`,
    );
  }
  if (lifecycle.socketOpen) {
    fail("setconn", `the socket ${lifecycle.conn} is already open; call setconn before opensocket`);
  }
  const socket = parseSocketSpec(conn);
  if (socket === "type") {
    fail("setconn", `unknown socket type in ${JSON.stringify(conn)}; use unix:, local:, inet: or inet6:`);
  }
  if (socket === "path") fail("setconn", `${JSON.stringify(conn)} has no path; use ${conn}/path/to/socket`);
  if (socket === "port") {
    const numeric = /^[^:]+:\d+(@|$)/.test(conn);
    fail(
      "setconn",
      `${JSON.stringify(conn)} must be ${conn.split(":")[0]}:port@host${numeric ? " with a port from 1 to 65535" : ""}`,
    );
  }
  check(
    "setconn",
    native("setconn").functions.smfi_setconn(conn),
    () => "libmilter refused the socket spec (out of memory?)",
  );
  lifecycle.conn = conn;
  lifecycle.socket = socket;
}

/**
 * Creates the socket given to {@linkcode setconn} now, so that a bad path
 * or a busy port fails here rather than in `main`. With `true`, an existing
 * unix socket file at that path is removed first (libmilter removes only a
 * socket, never another kind of file). A unix socket gets the permissions of
 * {@linkcode setsocketmode} at once. Call after {@linkcode register} and
 * {@linkcode setconn}, before `main`. Wraps `smfi_opensocket`.
 *
 * @throws {MilterError} when the socket cannot be created.
 */
export function opensocket(rmsocket: boolean): void {
  beforeMain("opensocket");
  if (typeof rmsocket !== "boolean") fail("opensocket", `expected a boolean, got ${describe(rmsocket)}`);
  createSocket("opensocket", rmsocket);
}

/**
 * TCP_NODELAY on libmilter's listening socket, found as this process's
 * listening TCP socket on `port` (libmilter does not expose it). libmilter
 * leaves Nagle's algorithm on, and at end of message a filter's modifications
 * go out as several small writes: Nagle holds the last one until the MTA's
 * delayed ACK, about 40 ms per message over `inet:`. Linux copies the option
 * from a listening socket to the connections it accepts. `false` where it
 * cannot be done (not Linux, or no such socket).
 */
function setListenerNoDelay(lib: Libmilter, port: number): boolean {
  const fd = findTcpListener(lib.libc, port);
  return fd !== null && setTcpNoDelay(lib.libc, fd);
}

/** smfi_opensocket, then the socket's permissions. */
function createSocket(fn: string, rmsocket: boolean): void {
  if (!isRegistered()) fail(fn, "register a filter first");
  if (lifecycle.conn === null) fail(fn, "call setconn first");
  check(
    fn,
    native(fn).functions.smfi_opensocket(rmsocket),
    () =>
      `cannot create ${lifecycle.conn} (address in use, a stale socket file without opensocket(true), ` +
      "or a missing directory or permission)",
  );
  lifecycle.socketOpen = true;
  const socket = lifecycle.socket!;
  if (socket.kind === "unix") lifecycle.socketFile = fileIdentity(socket.path);
  if (socket.kind !== "unix") {
    if (lifecycle.tcpNoDelay && !setListenerNoDelay(native(fn), socket.port)) {
      writeStderr(
        `milter: could not set TCP_NODELAY on ${lifecycle.conn}; messages may stall ~40 ms at end of message`,
      );
    }
    return;
  }
  try {
    chmodSync(socket.path, lifecycle.socketMode);
  } catch (error) {
    fail(fn, `cannot set the permissions of ${socket.path} to ${lifecycle.socketMode.toString(8)}`, { cause: error });
  }
}

/**
 * Sets the permissions a unix socket gets when it is created: by default
 * `0o660`, read-write for its owner and group only. The MTA's user must be
 * able to write to the socket: give the socket's directory the MTA's group
 * with the setgid bit (`chgrp postfix dir && chmod 2750 dir`), or run the
 * filter in that group. Inet sockets have no permissions: bind them to a
 * loopback address. Must be called before {@linkcode opensocket} and `main`.
 * This function is an extension: the OCaml module has no equivalent.
 *
 * @throws {MilterError} for a mode that is not an integer from 0 to 0o777, or after main.
 */
export function setsocketmode(mode: number): void {
  beforeMain("setsocketmode");
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    fail("setsocketmode", `expected a mode from 0 to 0o777, got ${describe(mode)}`);
  }
  if (lifecycle.socketOpen) fail("setsocketmode", "the socket is already open; call setsocketmode before opensocket");
  lifecycle.socketMode = mode;
}

/**
 * Whether an inet socket gets TCP_NODELAY (default `true`). libmilter leaves
 * Nagle's algorithm on, which over TCP stalls each message about 40 ms at end
 * of message (the filter's last small write waits for the MTA's delayed ACK);
 * with TCP_NODELAY on the listening socket, which accepted connections
 * inherit on Linux, replies go out at once. Must be called before
 * {@linkcode opensocket} and `main`. This function is an extension: the OCaml
 * module has no equivalent.
 *
 * @throws {MilterError} for a non-boolean, or after the socket was created.
 */
export function settcpnodelay(on: boolean): void {
  beforeMain("settcpnodelay");
  if (typeof on !== "boolean") fail("settcpnodelay", `expected a boolean, got ${describe(on)}`);
  if (lifecycle.socketOpen) fail("settcpnodelay", "the socket is already open; call settcpnodelay before opensocket");
  lifecycle.tcpNoDelay = on;
}

/**
 * Sets the I/O timeout with the MTA in seconds (libmilter's default is
 * 7210). 0 means "do not wait", not "wait forever". Must be called before
 * `main`. Wraps `smfi_settimeout`.
 *
 * @throws {MilterError} for a negative or non-integer value.
 */
export function settimeout(seconds: number): void {
  beforeMain("settimeout");
  check(
    "settimeout",
    native("settimeout").functions.smfi_settimeout(requireInt("settimeout", "the timeout", seconds, 0)),
  );
  lifecycle.timeout = seconds;
}

/**
 * Sets the `listen(2)` backlog of the socket. Must be called before
 * `main`. Wraps `smfi_setbacklog`.
 *
 * @throws {MilterError} for a value below 1.
 */
export function setbacklog(backlog: number): void {
  beforeMain("setbacklog");
  check(
    "setbacklog",
    native("setbacklog").functions.smfi_setbacklog(requireInt("setbacklog", "the backlog", backlog, 1)),
  );
  lifecycle.backlog = backlog;
}

/**
 * Sets libmilter's debug level, 0 (none) to 6 (most verbose); messages go
 * to standard output. Wraps `smfi_setdbg`.
 *
 * @throws {MilterError} for a negative or non-integer level.
 */
export function setdbg(level: number): void {
  check("setdbg", native("setdbg").functions.smfi_setdbg(requireInt("setdbg", "the debug level", level, 0)));
  lifecycle.dbg = level;
}

/**
 * Sets the largest command libmilter accepts from the MTA (65535 by
 * default; 262143 and 1048575 match the MTA's `MDS_256K`/`MDS_1M`) and
 * returns the previous value. Wraps `smfi_setmaxdatasize`, which the OCaml
 * module lacks.
 *
 * @throws {MilterError} for a value below 1.
 */
export function setmaxdatasize(size: number): number {
  const previous = native("setmaxdatasize").setmaxdatasize(requireInt("setmaxdatasize", "the size", size, 1));
  lifecycle.maxDataSize = size;
  return previous;
}

/**
 * The runtime version of libmilter as `[major, minor, patch level]`, e.g.
 * `[1, 0, 1]`. Wraps `smfi_version`.
 *
 * @throws {MilterError} when libmilter cannot be loaded.
 */
export function version(): [number, number, number] {
  return native("version").version() ?? fail("version", "libmilter returned MI_FAILURE", { code: -1 });
}

/** Options of {@linkcode main}, an extension of the OCaml `main : unit -> unit`. */
export interface MainOptions {
  /**
   * Seconds `stop` waits for open connections to end before shutting libmilter
   * down (new connections are refused meanwhile). Default 30. `Infinity`
   * waits for as long as they take; durations past about 24.8 days (what a
   * timer holds) wait that long.
   */
  drainTimeout?: number;
  /** Whether SIGINT, SIGTERM and SIGHUP call `stop` while main runs. Default `true`. */
  signals?: boolean;
  /**
   * About how many MTA connections are served at once; more wait in the
   * listen backlog until one closes (the MTA's own timeout then applies).
   * The bound is kept in file descriptors, so descriptors the program opens
   * or closes while main runs move it by as many. Default: the process's
   * soft `RLIMIT_NOFILE` (`ulimit -n`, systemd's `LimitNOFILE`), which it
   * never raises. Without the native shim, also at most what koffi's relay
   * pool allows: 4,088 descriptors, about 4,060 connections.
   */
  maxConnections?: number;
  /**
   * Seconds a callback's Promise may stay pending (default 8: below
   * Sendmail's 10 s and Postfix's 30 s command timeouts, so that the filter,
   * not the MTA, decides). Past it the callback answers Tempfail with
   * `451 4.3.0`, the failure is reported (kind `"timeout"`), and what the
   * Promise does later reaches nothing. `Infinity` waits without bound.
   */
  callbackTimeout?: number;
  /**
   * Bytes of pipelined calls one connection may have queued (default
   * 262,144). At a stage a connection negotiated as no reply (`NR_HDR`,
   * `NR_EOH`, `NR_BODY`) that the filter has a callback for, the native shim
   * answers libmilter at once and queues the call: the callback runs later,
   * in order with the connection's other callbacks, and the next stage that
   * replies waits for it. When a connection's queue is full, libmilter stops
   * reading from that MTA connection until the callbacks catch up. `0` turns
   * pipelining off: every callback then runs while libmilter waits.
   * Without the shim there is no pipelining.
   */
  pipelineBytes?: number;
  /**
   * The macros a pipelined callback can read with `getsymval`: captured for
   * each pipelined call when the shim queues it, as they were at its stage
   * (libmilter's own copy may already hold the next stage's by the time the
   * callback runs). A one-letter macro may be named with or without braces
   * (`i`, `{i}`), a longer one as the MTA sends it (`{mail_addr}`). Default: every
   * macro Postfix and Sendmail send by default, with `{client_addr}` and
   * `{client_name}` ({@linkcode DEFAULT_PIPELINE_MACROS}). getsymval of any
   * other in a pipelined callback throws MilterError. At most 256; `[]`
   * captures nothing.
   */
  pipelineMacros?: string[];
  /**
   * Serves the figures of {@linkcode metrics} on `GET /metrics` at this
   * socket while main runs, in {@linkcode setconn}'s syntax
   * (`"inet:9464@127.0.0.1"`, `"unix:/run/milter/metrics.sock"`); anything
   * else gets 404. Bind it to a loopback or private address. main rejects
   * (after stopping) when the socket cannot be opened. Under Deno, needs
   * `--allow-net`. Default: none.
   */
  metrics?: string;
  /**
   * One log entry per message (see {@linkcode LogEntry}) when it ends (end
   * of message, abort, or the connection closing with it open), and one per
   * connection that had none: `"text"`, one logfmt line on stderr (what
   * journald keeps); `"json"`, one JSON object per line on stderr; or a
   * function given each entry. To see every message and recipient, the
   * binding then also observes envfrom, envrcpt, end of message and abort
   * where the filter has no callback (queued, without holding the MTA; see
   * the README for what it costs). Default: none.
   */
  log?: "text" | "json" | ((entry: LogEntry) => void);
  /**
   * On SIGHUP, called for a new filter (or a Promise of one), which
   * {@linkcode replace} installs: connections that start afterwards use it,
   * open ones finish on theirs. When it throws, rejects or returns something
   * that is not a valid filter, the filter in place stays and the failure is
   * reported on stderr. SIGHUPs during a reload make one more reload after
   * it. Without it, SIGHUP stops the filter as libmilter does.
   */
  reload?: () => Answer<Filter>;
}

/**
 * The macros kept for pipelined callbacks unless main is told otherwise:
 * those Postfix (`milter_*_macros`) and Sendmail (`confMILTER_MACROS_*`) send
 * by default, and the client's address and name.
 */
export const DEFAULT_PIPELINE_MACROS: readonly string[] = Object.freeze([
  "i",
  "j",
  "_",
  "v",
  "{daemon_name}",
  "{daemon_addr}",
  "{if_name}",
  "{if_addr}",
  "{client_addr}",
  "{client_name}",
  "{tls_version}",
  "{cipher}",
  "{cipher_bits}",
  "{cert_subject}",
  "{cert_issuer}",
  "{auth_type}",
  "{auth_authen}",
  "{auth_author}",
  "{auth_ssf}",
  "{mail_addr}",
  "{mail_host}",
  "{mail_mailer}",
  "{rcpt_addr}",
  "{rcpt_host}",
  "{rcpt_mailer}",
  "{msg_id}",
]);

/** The most macros {@linkcode MainOptions.pipelineMacros} may name: the shim captures them on libmilter's stack. */
const MAX_PIPELINE_MACROS = 256;

/** The default of {@linkcode MainOptions.pipelineBytes}: four body chunks of 64 KiB. */
const PIPELINE_BYTES = 256 * 1024;

/**
 * One run of `smfi_main`, from {@linkcode main} to its promise settling, as
 * explicit phases (`lifecycle.phase`): `running` until {@linkcode stop} (or
 * a stop signal) begins the drain; `draining` while open connections finish,
 * for at most the drain timeout; then `smfi_stop` is issued; `stopped` once
 * `smfi_main` has returned. Only its methods change the phase after `idle`.
 */
class Run {
  /** Ends the drain early (main has returned); `null` outside the drain. */
  #endDrain: (() => void) | null = null;
  /** Settles when the `smfi_stop` issued by the drain's end has returned (at once if none was). */
  #stopReturned: Promise<void> = Promise.resolve();
  #stopIssued = false;
  readonly #lib: Libmilter;
  readonly #drainTimeoutMs: number | null;

  /** `idle` → `running`. */
  constructor(lib: Libmilter, drainTimeoutMs: number | null) {
    this.#lib = lib;
    this.#drainTimeoutMs = drainTimeoutMs;
    lifecycle.phase = "running";
  }

  /** Whether `smfi_stop` was issued: `smfi_main` failing after it is a stop, not an error. */
  get stopIssued(): boolean {
    return this.#stopIssued;
  }

  /**
   * `running` → `draining`: new connections are refused, open ones get the
   * drain timeout, then `smfi_stop` is issued. Nothing in another phase.
   */
  drain(): void {
    if (lifecycle.phase !== "running") return;
    const relay = this.#lib.relay;
    relay.refuseNew();
    lifecycle.phase = "draining";
    const timer = this.#drainTimeoutMs === null ? undefined : setTimeout(() => end(), this.#drainTimeoutMs);
    const end = (): void => {
      clearTimeout(timer);
      onSessionEnd(null);
      this.#endDrain = null;
      if (lifecycle.phase !== "draining") return;
      abandonPending(allSessions()); // past the drain: pending callbacks answer Tempfail now
      this.#stopIssued = true;
      this.#stopReturned = this.#lib.blocking.run("smfi_stop").then(() => {}, () => {});
      wakeListener();
    };
    this.#endDrain = end;
    // Every connection the shim admitted ends with a close, in JS: a session's end.
    const drained = (): boolean => openSessions() === 0 && relay.admitted() === 0;
    if (drained()) end();
    else onSessionEnd(() => drained() && end());
  }

  /**
   * `running` → `draining` without the drain: libmilter's own signal thread
   * took the stop signal, and its worker pool ends open connections now.
   */
  stoppedByLibmilter(): void {
    if (lifecycle.phase !== "running") return;
    this.#lib.relay.refuseNew();
    lifecycle.phase = "draining";
    wakeListener();
  }

  /**
   * → `stopped`: `smfi_main` has returned. Ends the drain, answers every
   * callback still waiting for its Promise, and releases every session.
   *
   * @returns when no `smfi_stop` is outstanding any more.
   */
  stopped(): Promise<void> {
    lifecycle.phase = "stopped";
    this.#endDrain?.();
    abandonPending(allSessions());
    releaseAll();
    return this.#stopReturned;
  }
}

/** The run of `smfi_main`, `null` before main. */
let run: Run | null = null;

/**
 * Hands control to libmilter: `smfi_main` runs on a thread of its own
 * (which never keeps the process from exiting) while callbacks run on the JS
 * thread. The promise resolves when the filter has
 * stopped (after {@linkcode stop}, or SIGINT/SIGTERM/SIGHUP, whose handlers
 * are installed only while it runs), and rejects with {@linkcode MilterError}
 * when libmilter fails. libmilter cannot run twice in one process.
 *
 * @throws {MilterError} (as a rejection) without a registered filter or socket, or when called twice.
 */
export function main(options: MainOptions = {}): Promise<void> {
  try {
    return start(options);
  } catch (error) {
    return Promise.reject(error);
  }
}

/** {@linkcode MainOptions} checked, with their defaults, as main uses them. */
interface Settings {
  /** `drainTimeout` in ms, `null` for as long as connections take. */
  readonly drainTimeoutMs: number | null;
  readonly maxConnections: number | undefined;
  /** `callbackTimeout` in ms, `null` for no bound. */
  readonly callbackTimeoutMs: number | null;
  readonly pipelineBytes: number;
  readonly pipelineMacros: readonly string[];
  readonly signals: boolean;
  readonly metrics: string | null;
  readonly log: ((entry: LogEntry) => void) | null;
  readonly reload: (() => Answer<Filter>) | null;
}

/** What `main({ log })` names, as the function that writes an entry. */
function logWriter(log: MainOptions["log"]): ((entry: LogEntry) => void) | null {
  if (log === undefined || log === null) return null;
  if (log === "text") return (entry) => writeStderr(logfmt(entry));
  if (log === "json") return (entry) => writeStderr(JSON.stringify(entry));
  if (typeof log === "function") return log;
  fail("main", `log must be "text", "json" or a function, got ${describe(log)}`);
}

/**
 * Checks main's options and fills in their defaults.
 *
 * @throws {MilterError} naming the first option that is not valid.
 */
function readOptions(options: MainOptions): Settings {
  const drain = options.drainTimeout ?? 30;
  if (typeof drain !== "number" || !(drain >= 0)) {
    fail("main", `drainTimeout must be a number of seconds >= 0, got ${describe(drain)}`);
  }
  if (options.maxConnections !== undefined) requireInt("main", "maxConnections", options.maxConnections, 1);
  const callbackTimeout = options.callbackTimeout ?? 8;
  if (typeof callbackTimeout !== "number" || !(callbackTimeout > 0)) {
    fail("main", `callbackTimeout must be a number of seconds > 0, got ${describe(callbackTimeout)}`);
  }
  const pipelineBytes = options.pipelineBytes ?? PIPELINE_BYTES;
  if (!Number.isSafeInteger(pipelineBytes) || pipelineBytes < 0) {
    fail("main", `pipelineBytes must be an integer number of bytes >= 0, got ${describe(pipelineBytes)}`);
  }
  const pipelineMacros = options.pipelineMacros ?? DEFAULT_PIPELINE_MACROS;
  if (!Array.isArray(pipelineMacros) || pipelineMacros.length > MAX_PIPELINE_MACROS) {
    fail(
      "main",
      `pipelineMacros must be an array of at most ${MAX_PIPELINE_MACROS} macro names, got ${describe(pipelineMacros)}`,
    );
  }
  for (const name of pipelineMacros) {
    if (typeof name !== "string" || name === "" || name.includes("\0")) {
      fail("main", `pipelineMacros must hold non-empty macro names without NUL, got ${describe(name)}`);
    }
  }
  if (options.metrics !== undefined && (typeof options.metrics !== "string" || options.metrics === "")) {
    fail("main", `metrics must be a socket spec such as "inet:9464@127.0.0.1", got ${describe(options.metrics)}`);
  }
  if (options.reload !== undefined && typeof options.reload !== "function") {
    fail("main", `reload must be a function returning a filter, got ${describe(options.reload)}`);
  }
  return {
    metrics: options.metrics ?? null,
    log: logWriter(options.log),
    reload: options.reload ?? null,
    drainTimeoutMs: timerDelay(drain),
    maxConnections: options.maxConnections,
    callbackTimeoutMs: timerDelay(callbackTimeout),
    pipelineBytes,
    pipelineMacros,
    signals: options.signals ?? true,
  };
}

function start(options: MainOptions): Promise<void> {
  if (typeof options !== "object" || options === null) {
    fail("main", `expected options or nothing, got ${describe(options)}`);
  }
  if (lifecycle.phase === "stopped") {
    fail("main", "libmilter has already run and stopped; it cannot be restarted in this process");
  }
  if (lifecycle.phase !== "idle") fail("main", "already running");
  if (!isRegistered()) fail("main", "no filter registered; call register first");
  if (lifecycle.conn === null) fail("main", "no socket; call setconn first");
  const settings = readOptions(options);
  const lib = native("main");
  lifecycle.callbackTimeoutMs = settings.callbackTimeoutMs;
  // Create the socket now rather than inside smfi_main, so that a unix
  // socket gets its permissions (and an inet one TCP_NODELAY) before
  // libmilter accepts any connection on it.
  if (!lifecycle.socketOpen) createSocket("main", false);

  let limit: FileLimit | null = null;
  let removeSignals: () => void = () => {};
  try {
    limit = applyConnectionLimit(lib, settings.maxConnections);
    if (limit === null && lib.relay.withoutShim !== null) {
      writeStderr(
        `milter: cannot bound connections on this system (no setrlimit); more than ${
          lib.maxAsyncCalls - RESERVED_ASYNC_CALLS
        } ` +
          "MTA commands in flight at once would exceed koffi's relay pool and end the process",
      );
    } else if (limit === null && settings.maxConnections !== undefined) {
      writeStderr("milter: cannot bound connections on this system (no setrlimit); maxConnections is not applied");
    }
    if (settings.signals) removeSignals = onStopSignals((signal) => onSignal(signal, settings.reload));
    try {
      startPipeline(settings.pipelineBytes, settings.pipelineMacros, { queued: runQueued, relayed: runRelayed });
    } catch (error) {
      fail("main", `cannot start the pipeline's thread: ${describe(error)}`, { cause: error });
    }
  } catch (error) {
    removeSignals();
    restoreFileLimit(lib, limit);
    throw error;
  }
  const current = run = new Run(lib, settings.drainTimeoutMs);
  if (settings.log !== null) {
    logTo(settings.log);
    observeMessages();
  }
  // Served while main runs; a socket that cannot be opened stops the filter, and main rejects with why.
  let metricsFailure: unknown = null;
  const metricsServer = settings.metrics === null ? Promise.resolve(null) : serveMetrics(settings.metrics).catch(
    (error: unknown) => {
      metricsFailure = error;
      stop();
      return null;
    },
  );
  // A program that ends while main runs (process.exit, an uncaught exception) ends with its own code:
  // libmilter's threads, still serving connections, must not call into the runtime as it tears down.
  const removeExit = onProgramExit((code) => lib.blocking.onExit(code));
  const removeFatal = exitOnFatalErrors();
  warnWithoutShim(lib);
  const watch = watchLibmilterStop(lib, current);
  return new Promise<void>((resolve, reject) => {
    const done = async (error: unknown, rc: number): Promise<void> => {
      clearInterval(watch);
      removeExit(); // no libmilter thread calls into JS any more (see BlockingCalls.run)
      removeFatal();
      const stopReturned = current.stopped();
      removeSignals();
      restoreFileLimit(lib, limit);
      removeUnixSocket(lifecycle.socket, lifecycle.socketFile);
      logTo(null);
      await (await metricsServer)?.close();
      // Resolve only once no call into libmilter is outstanding, so that a
      // program exiting right after main never tears down with native work
      // still running on another thread.
      await stopReturned;
      if (metricsFailure !== null) reject(metricsFailure);
      else if (error) reject(milterError("main", `smfi_main could not run: ${error}`, { cause: error }));
      // smfi_stop can reach libmilter before smfi_main has started its
      // listener (stop right after main); smfi_main then fails, but the
      // filter did what was asked: it stopped.
      else if (rc !== MI_SUCCESS && !current.stopIssued) {
        reject(
          milterError(
            "main",
            `libmilter failed on ${lifecycle.conn} (could not listen, or ` +
              "repeated accept/thread failures; libmilter logs the cause to syslog)",
            { code: rc },
          ),
        );
      } else resolve();
    };
    // On a thread of its own where the platform has the shim: a runtime
    // joins its worker pool at exit, and would wait there for smfi_main.
    lib.blocking.run("smfi_main", listenSettings()).then(
      (rc) => done(null, rc),
      (error) => done(error, -1), // no thread could be started: undo everything main set up
    );
  });
}

/** What smfi_main would give libmilter's listener: what the program set, and the registered filter. */
function listenSettings(): Listen {
  const { name, version, flags } = registeredDesc();
  return {
    conn: lifecycle.conn!,
    dbg: lifecycle.dbg,
    timeout: lifecycle.timeout,
    backlog: lifecycle.backlog,
    name,
    version,
    flags,
  };
}

/** Says once, on stderr, when libmilter's main loop must run on the runtime's worker pool. */
function warnWithoutShim(lib: Libmilter): void {
  const thread = lib.blocking.thread;
  if (thread.kind === "worker") {
    writeStderr(
      `milter: ${thread.reason}.\nmilter: libmilter's main loop runs on the runtime's worker pool instead; ` +
        "under Node, process.exit() then waits until the filter has stopped",
    );
  }
}

/**
 * libmilter's own signal thread also waits for SIGHUP, SIGTERM and SIGINT,
 * and the kernel hands a signal to any thread that accepts it: now and then
 * libmilter gets it instead of the JS thread and stops by itself, without the
 * drain (its worker pool then ends open connections, and the MTA applies its
 * milter_default_action). Watch for that, say so, and wake the accept loop so
 * main returns at once rather than up to 5 seconds later.
 */
function watchLibmilterStop(lib: Libmilter, current: Run): ReturnType<typeof setInterval> | undefined {
  if (lib.stopping() === null) return undefined;
  return setInterval(() => {
    if (lifecycle.phase !== "running" || !lib.stopping()) return;
    writeStderr(
      "milter: libmilter's signal thread took the stop signal; open connections end now without draining " +
        "(the MTA applies its milter_default_action)",
    );
    current.stoppedByLibmilter();
  }, 100);
}

/** The device and inode of the file at `path`, or `null` when there is none. */
function fileIdentity(path: string): FileIdentity | null {
  try {
    const stat = statSync(path, { bigint: true });
    return { dev: stat.dev, ino: stat.ino };
  } catch {
    return null;
  }
}

/**
 * libmilter leaves its unix socket file behind when running as root; remove
 * it, but only the socket this process created: another instance may have
 * replaced it since (with `opensocket(true)`), and deleting that one would
 * cut its MTA off.
 */
function removeUnixSocket(socket: SocketSpec | null, created: FileIdentity | null): void {
  if (socket?.kind !== "unix" || created === null) return;
  try {
    const now = statSync(socket.path, { bigint: true });
    if (now.isSocket() && now.dev === created.dev && now.ino === created.ino) unlinkSync(socket.path);
  } catch {
    // already gone
  }
}

/**
 * libmilter's accept loop notices a stop only when its `select` wakes up,
 * up to 5 seconds later; a connection to the listening socket wakes it at
 * once. Pokes it every 50 ms until `smfi_main` has returned (the first poke
 * may arrive before `smfi_stop` has set the stop flag).
 */
function wakeListener(): void {
  const socket = lifecycle.socket;
  if (socket === null) return;
  const poke = (): void => {
    if (lifecycle.phase === "stopped") return;
    try {
      const connection = connectTo(connectTarget(socket));
      connection.on("error", () => {});
      connection.on("connect", () => connection.destroy());
    } catch {
      return; // not permitted (e.g. Deno without --allow-net): libmilter stops within 5 s anyway
    }
    setTimeout(poke, 50).unref?.();
  };
  setTimeout(poke, 10).unref?.();
}

/** A stop signal while main runs: SIGHUP reloads when main has `reload`; anything else stops. */
function onSignal(signal: string, reload: (() => Answer<Filter>) | null): void {
  if (signal === "SIGHUP" && reload !== null) reloads.request(reload);
  else stop();
}

/**
 * The reloads of `main({ reload })`: one at a time; a SIGHUP during one
 * makes one more after it (what it loads may have changed meanwhile).
 */
const reloads = {
  running: false,
  again: false,
  request(reload: () => Answer<Filter>): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    void this.once(reload).finally(() => {
      this.running = false;
      if (this.again && lifecycle.phase === "running") {
        this.again = false;
        this.request(reload);
      }
    });
  },
  async once(reload: () => Answer<Filter>): Promise<void> {
    try {
      const filter = await reload();
      if (lifecycle.phase !== "running") return; // stopping meanwhile: nothing to install it for
      replace(filter);
      countEvent("reloadOk");
      writeStderr(`milter: reloaded on SIGHUP; new connections use filter ${JSON.stringify(registered().name)}`);
    } catch (error) {
      countEvent("reloadFailed");
      const why = error instanceof Error ? error.message : describe(error);
      writeStderr(`milter: reload on SIGHUP failed; the filter in place stays: ${why}`);
    }
  },
};

/**
 * Shuts the filter down: no new connections are accepted, open connections
 * get up to `drainTimeout` seconds (see {@linkcode MainOptions}) to finish,
 * then libmilter stops (off the JS thread, as `smfi_stop` can block for
 * seconds) and the promise of {@linkcode main} resolves. Calling it again
 * while stopping does nothing. Wraps `smfi_stop`.
 *
 * @throws {MilterError} when main is not running.
 */
export function stop(): void {
  if (run === null) fail("stop", "main is not running");
  run.drain();
}
