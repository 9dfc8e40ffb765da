/**
 * An MTA in a box: a milter protocol 6 client that drives any milter over
 * `unix:`, `inet:` or `inet6:` sockets as Postfix or Sendmail would, and
 * reports each reply and, at end of message, the modifications the filter
 * requested. It is how this project tests itself, and how a filter author
 * unit-tests a filter without an MTA.
 *
 * @module
 */

import type { Socket } from "node:net";
import { type ConnectTarget, connectTarget, parseSocketSpec, type SockAddr } from "../convert.ts";
import { connectTo } from "../runtime.ts";
import { encodeMask, type Flag, FLAG_BITS, type Step, STEP_BITS } from "../variants.ts";
import {
  ALL_ACTIONS,
  ALL_STEPS,
  COMMAND_NAMES,
  concat,
  cstrings,
  decodeModification,
  decodeNegotiation,
  decodeReply,
  endsExchange,
  type Frame,
  frameHead,
  FrameReader,
  MAX_FRAME,
  MilterClientError,
  type Modification,
  type Negotiated,
  PROTOCOL_VERSION,
  refusesRecipient,
  type Reply,
  u32,
} from "./protocol.ts";

/** Options of {@linkcode MilterClient.open}. */
export interface ClientOptions {
  /** Protocol version offered. Default 6. */
  version?: number;
  /** Actions offered to the filter. Default: all of protocol 6. */
  actions?: Flag[] | number;
  /** Protocol steps offered. Default: all of protocol 6, as Postfix offers. */
  steps?: Step[] | number;
  /**
   * Milliseconds to wait for the connection, and for each stage's final
   * reply: the whole wait, progress frames included. `Infinity`: no limit.
   * Default 10,000.
   */
  timeout?: number;
  /**
   * Send stages the filter asked to skip (NO* steps) anyway. Default `false`:
   * like an MTA, the client then does not send them and answers `skipped`.
   */
  sendSkipped?: boolean;
  /**
   * The largest frame accepted from the milter, in bytes (its length prefix:
   * letter and payload). A longer one fails as soon as its length is read.
   * Default {@linkcode MAX_FRAME} (64 MiB).
   */
  maxFrame?: number;
  /** The most modification (and progress) frames accepted at end of one message. Default 10,000. */
  maxModifications?: number;
  /** The most payload bytes those frames may hold together. Default 64 MiB. */
  maxModificationBytes?: number;
}

/** The defaults of {@linkcode ClientOptions}' limits. */
const DEFAULTS = {
  timeout: 10_000,
  maxFrame: MAX_FRAME,
  maxModifications: 10_000,
  maxModificationBytes: 64 * 1024 * 1024,
} as const;

type Limits = { -readonly [K in keyof typeof DEFAULTS]: number };

/**
 * The options' limits with their defaults.
 *
 * @throws {MilterClientError} `usage` for a limit that is not a positive number.
 */
function limitsOf(options: ClientOptions): Limits {
  const limits = { ...DEFAULTS } as Limits;
  for (const name of Object.keys(DEFAULTS) as (keyof Limits)[]) {
    const value = options[name] ?? DEFAULTS[name];
    if (typeof value !== "number" || !(value > 0)) {
      throw new MilterClientError("usage", `ClientOptions.${name} must be a positive number, got ${String(value)}`);
    }
    limits[name] = value;
  }
  return limits;
}

/** The longest delay one `setTimeout` holds (2³¹ − 1 ms, about 24.8 days); a longer one fires at once. */
const TIMER_MAX_MS = 0x7fffffff;

/**
 * Calls `fn` once `ms` milliseconds have passed: never for `Infinity`, and
 * through as many timers as it takes past what one holds. Returns the cancel.
 */
function after(ms: number, fn: () => void): () => void {
  if (ms === Infinity) return () => {};
  const due = Date.now() + ms;
  let timer: ReturnType<typeof setTimeout>;
  const arm = (): void => {
    const left = due - Date.now();
    timer = left > TIMER_MAX_MS ? setTimeout(arm, TIMER_MAX_MS) : setTimeout(fn, Math.max(left, 0));
  };
  arm();
  return () => clearTimeout(timer);
}

/** The stage each command letter starts, for error messages. */
const STAGE_OF: Readonly<Record<string, string>> = { ...COMMAND_NAMES, O: "negotiation" };

/** Macros sent before a command, by name (`"i"`, `"{client_addr}"`). */
export type Macros = Readonly<Record<string, string>>;

/** The outcome of end of message. */
export interface EomResult {
  /** The final answer. */
  readonly reply: Reply;
  /** Every modification requested, in order. */
  readonly modifications: Modification[];
  /** The replacement body (all `replacebody` chunks joined), or `null` when unchanged. */
  readonly body: Uint8Array | null;
}

/** A message to push through {@linkcode MilterClient.message}. */
export interface MessageInput {
  /** The envelope sender, with its angle brackets (`<>` for a bounce). */
  from: string;
  /** ESMTP arguments of MAIL FROM, e.g. `["BODY=8BITMIME"]`. */
  fromArgs?: string[];
  /** The envelope recipients, each with its angle brackets. */
  rcpt: string[];
  /**
   * The header fields in order, as `[name, value]`: strings are sent as
   * UTF-8, byte arrays as they are (a Latin-1 value, say). Any iterable: a
   * large message's fields need not be in one array.
   */
  headers: Iterable<readonly [string | Uint8Array, string | Uint8Array]>;
  /** The body, with CRLF line ends (a string is sent as UTF-8). */
  body: Uint8Array | string;
}

/** Macros {@linkcode MilterClient.message} sends before each of its stages. */
export interface MessageMacros {
  /** Sent before MAIL FROM. */
  envfrom?: Macros;
  /**
   * Sent before each RCPT TO; as a function, those for one recipient, given
   * how many recipients were accepted before it (Postfix sends the queue id
   * `i` only once one was).
   */
  envrcpt?: Macros | ((rcpt: string, accepted: number) => Macros);
  /** Sent before DATA. */
  data?: Macros;
  /** Sent before each header. */
  header?: Macros;
  /** Sent before end of headers. */
  eoh?: Macros;
  /** Sent before each body chunk. */
  body?: Macros;
  /** Sent before end of message. */
  eom?: Macros;
}

/** Every reply of {@linkcode MilterClient.message}, stage by stage. */
export interface MessageResult extends EomResult {
  /** Each command's reply in order, named by its stage (`envfrom`, `envrcpt`, `header`, …). */
  readonly replies: {
    /** The stage: `envfrom`, `envrcpt`, `data`, `header`, `eoh`, `body` or `eom`. */
    readonly stage: string;
    /** What the filter answered there. */
    readonly reply: Reply;
  }[];
}

/** The MTA side of one milter connection. */
export class MilterClient {
  readonly #socket: Socket;
  readonly #limits: Limits;
  readonly #sendSkipped: boolean;
  readonly #reader: FrameReader;
  #frames: Frame[] = [];
  /** Payload bytes of the frames received and not yet read. */
  #queued = 0;
  #waiter: (() => void) | null = null;
  #ended: MilterClientError | null = null;
  #negotiated: Negotiated | null = null;
  /** The first command sent that was longer than libmilter reads, said for an error message; null while none was. */
  #oversized: string | null = null;

  private constructor(socket: Socket, options: ClientOptions, limits: Limits) {
    this.#socket = socket;
    this.#limits = limits;
    this.#sendSkipped = options.sendSkipped ?? false;
    this.#reader = new FrameReader(limits.maxFrame);
    socket.on("data", (chunk: Uint8Array) => this.#receive(chunk));
    socket.on("close", () => {
      this.#ended ??= this.#closed("");
      this.#wake();
    });
    socket.on("error", (error) => {
      this.#ended ??= this.#closed(` (${error.message})`, error);
      this.#wake();
    });
  }

  /**
   * Connects to the milter at `spec` (`unix:/path`, `inet:port@host`,
   * `inet6:port@host`, or a bare path) and negotiates options.
   *
   * @throws {MilterClientError} when the spec or an option is bad
   * (`usage`), the socket cannot be reached (`connect`), or the negotiation
   * fails.
   */
  static async open(spec: string, options: ClientOptions = {}): Promise<MilterClient> {
    const limits = limitsOf(options);
    const socket = await openSocket(spec, limits.timeout);
    const client = new MilterClient(socket, options, limits);
    try {
      await client.#negotiate(options);
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  /** What the filter agreed to in negotiation. */
  get negotiated(): Negotiated {
    return this.#negotiated!;
  }

  /** Splits a received chunk into frames; reads no further while more than a frame's worth waits unread. */
  #receive(chunk: Uint8Array): void {
    try {
      for (const frame of this.#reader.push(chunk)) {
        this.#frames.push(frame);
        this.#queued += frame.data.length;
      }
      if (this.#queued > this.#limits.maxFrame) this.#socket.pause();
    } catch (error) {
      this.#abandon(error);
    }
    this.#wake();
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }

  /** Ends the connection after a failure the exchange cannot recover from; returns the failure. */
  #abandon(error: unknown): unknown {
    if (error instanceof MilterClientError) this.#ended ??= error;
    this.#socket.destroy();
    return error;
  }

  /** The end of the wait for a stage's final reply. */
  #deadline(): number {
    return Date.now() + this.#limits.timeout;
  }

  /** The next frame from the filter, if it comes before `deadline`. */
  async #read(deadline: number, stage: string): Promise<Frame> {
    while (this.#frames.length === 0) {
      if (this.#ended) throw this.#ended;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new MilterClientError(
          "timeout",
          `milter gave no final reply to ${stage} within ${this.#limits.timeout} ms`,
        );
      }
      await new Promise<void>((resolve) => {
        const cancel = after(left, resolve);
        this.#waiter = () => {
          cancel();
          resolve();
        };
      });
    }
    const frame = this.#frames.shift()!;
    this.#queued -= frame.data.length;
    if (this.#socket.isPaused() && this.#queued <= this.#limits.maxFrame) this.#socket.resume();
    return frame;
  }

  #send(code: string, data?: Uint8Array): void {
    if (this.#ended) throw this.#ended;
    if (data && data.length > this.#maxDataSize()) {
      this.#oversized ??= `a ${STAGE_OF[code]} command of ${data.length} bytes`;
    }
    // The head, then the payload as it is: a body chunk is not copied into a frame of its own.
    this.#socket.cork();
    this.#socket.write(frameHead(code, data?.length ?? 0));
    if (data && data.length > 0) this.#socket.write(data);
    this.#socket.uncork();
  }

  /**
   * The longest command (payload after its letter) libmilter reads: 65,535
   * bytes, or what the milter negotiated with MDS_256K or MDS_1M.
   */
  #maxDataSize(): number {
    if (!this.#negotiated) return Infinity;
    return this.#has("MDS_1M") ? 1024 * 1024 - 1 : this.#has("MDS_256K") ? 256 * 1024 - 1 : 65535;
  }

  /** The error of a connection the milter closed; after a command longer than libmilter reads, it says so. */
  #closed(detail: string, cause?: unknown): MilterClientError {
    const why = this.#oversized === null ? "" : `, after ${this.#oversized}: libmilter reads at most ` +
      `${this.#maxDataSize()} bytes in one command and closes the connection on a longer one`;
    return new MilterClientError("closed", `milter closed the connection${detail}${why}`, { cause });
  }

  async #negotiate(options: ClientOptions): Promise<void> {
    const actions = Array.isArray(options.actions)
      ? encodeMask(FLAG_BITS, options.actions)
      : options.actions ?? ALL_ACTIONS;
    const steps = Array.isArray(options.steps) ? encodeMask(STEP_BITS, options.steps) : options.steps ?? ALL_STEPS;
    this.#send("O", concat([u32(options.version ?? PROTOCOL_VERSION), u32(actions), u32(steps)]));
    const frame = await this.#read(this.#deadline(), STAGE_OF.O);
    if (frame.code !== "O") {
      throw new MilterClientError("protocol", `milter answered negotiation with ${JSON.stringify(frame.code)}`);
    }
    this.#negotiated = decodeNegotiation(frame.data);
  }

  #has(step: Step): boolean {
    return (this.#negotiated!.stepMask & STEP_BITS[step]) !== 0;
  }

  /** Sends the macros for the command `code` (no reply is expected). */
  #macros(code: string, macros: Macros | undefined): void {
    if (!macros || Object.keys(macros).length === 0) return;
    this.#send("D", concat([new TextEncoder().encode(code), cstrings(...Object.entries(macros).flat())]));
  }

  /** Sends one command and reads its reply, honouring NO* and NR_* steps. */
  async #command(
    code: string,
    data: Uint8Array,
    skip: Step | null,
    noReply: Step | null,
    macros?: Macros,
  ): Promise<Reply> {
    if (skip && this.#has(skip) && !this.#sendSkipped) return { action: "continue", skipped: true };
    this.#macros(code, macros);
    this.#send(code, data);
    if (noReply && this.#has(noReply)) return { action: "noreply" };
    try {
      return await this.#reply(STAGE_OF[code]);
    } catch (error) {
      throw this.#abandon(error);
    }
  }

  /** The final reply to `stage`, past any progress frames, within one timeout. */
  async #reply(stage: string): Promise<Reply> {
    const deadline = this.#deadline();
    for (;;) {
      const frame = await this.#read(deadline, stage);
      const reply = decodeReply(frame);
      if (reply) return reply;
      if (frame.code !== "p") {
        throw new MilterClientError("protocol", `milter sent ${JSON.stringify(frame.code)} where a reply was expected`);
      }
      decodeModification(frame); // checks the progress frame's layout
    }
  }

  /** Sends the connection information (`null` address: family unknown). */
  connect(hostname: string, addr: SockAddr | null = null, macros?: Macros): Promise<Reply> {
    let info: Uint8Array;
    if (addr === null) info = new TextEncoder().encode("U");
    else if (addr.family === "unix") {
      info = concat([new TextEncoder().encode("L"), new Uint8Array(2), cstrings(addr.path)]);
    } else {
      const port = new Uint8Array([addr.port >> 8, addr.port & 0xff]);
      info = concat([new TextEncoder().encode(addr.family === "inet" ? "4" : "6"), port, cstrings(addr.address)]);
    }
    return this.#command("C", concat([cstrings(hostname), info]), "NOCONNECT", "NR_CONN", macros);
  }

  /** Sends HELO/EHLO. */
  helo(name: string, macros?: Macros): Promise<Reply> {
    return this.#command("H", cstrings(name), "NOHELO", "NR_HELO", macros);
  }

  /** Sends MAIL FROM with its ESMTP arguments (raw bytes where given as `Uint8Array`). */
  envfrom(sender: string | Uint8Array, args: string[] = [], macros?: Macros): Promise<Reply> {
    return this.#command("M", cstrings(sender, ...args), "NOMAIL", "NR_MAIL", macros);
  }

  /** Sends RCPT TO with its ESMTP arguments (raw bytes where given as `Uint8Array`). */
  envrcpt(rcpt: string | Uint8Array, args: string[] = [], macros?: Macros): Promise<Reply> {
    return this.#command("R", cstrings(rcpt, ...args), "NORCPT", "NR_RCPT", macros);
  }

  /** Sends DATA. */
  data(macros?: Macros): Promise<Reply> {
    return this.#command("T", new Uint8Array(0), "NODATA", "NR_DATA", macros);
  }

  /** Sends one header (raw bytes where given as `Uint8Array`, e.g. a Latin-1 value). */
  header(name: string | Uint8Array, value: string | Uint8Array, macros?: Macros): Promise<Reply> {
    return this.#command("L", cstrings(name, value), "NOHDRS", "NR_HDR", macros);
  }

  /** Sends end of headers. */
  eoh(macros?: Macros): Promise<Reply> {
    return this.#command("N", new Uint8Array(0), "NOEOH", "NR_EOH", macros);
  }

  /**
   * Sends body bytes in chunks of at most 65,535 bytes (as MTAs do), with
   * `macros` before each; returns the reply to the last chunk sent, stopping
   * early at a reply other than continue.
   */
  async body(content: Uint8Array | string, macros?: Macros): Promise<Reply> {
    const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content;
    let reply: Reply = { action: "continue" };
    for (let at = 0; at < bytes.length; at += 65535) {
      reply = await this.#command("B", bytes.subarray(at, at + 65535), "NOBODY", "NR_BODY", macros);
      if (reply.action !== "continue" && reply.action !== "noreply") break;
    }
    return reply;
  }

  /**
   * Sends end of message and collects the modifications and the final reply.
   *
   * @throws {MilterClientError} `limit` past `maxModifications` or
   * `maxModificationBytes`, and as every stage does.
   */
  async eom(macros?: Macros): Promise<EomResult> {
    this.#macros("E", macros);
    this.#send("E");
    try {
      return await this.#collect();
    } catch (error) {
      throw this.#abandon(error);
    }
  }

  /** Reads the modifications up to the final reply of end of message, within the limits. */
  async #collect(): Promise<EomResult> {
    const deadline = this.#deadline();
    const { maxModifications, maxModificationBytes } = this.#limits;
    const modifications: Modification[] = [];
    let bytes = 0;
    for (;;) {
      const frame = await this.#read(deadline, STAGE_OF.E);
      const reply = decodeReply(frame);
      if (reply) return { reply, modifications, body: replacementBody(modifications) };
      const modification = decodeModification(frame);
      if (!modification) {
        throw new MilterClientError("protocol", `milter sent ${JSON.stringify(frame.code)} at end of message`);
      }
      bytes += frame.data.length;
      if (modifications.length >= maxModifications) {
        throw new MilterClientError(
          "limit",
          `milter sent more than ${maxModifications} modifications (maxModifications)`,
        );
      }
      if (bytes > maxModificationBytes) {
        throw new MilterClientError(
          "limit",
          `milter sent more than ${maxModificationBytes} bytes of modifications (maxModificationBytes)`,
        );
      }
      modifications.push(modification);
    }
  }

  /** Sends an unknown SMTP command. */
  unknown(command: string, macros?: Macros): Promise<Reply> {
    return this.#command("U", cstrings(command), "NOUNKNOWN", "NR_UNKN", macros);
  }

  /** Aborts the current message (no reply). */
  abort(): void {
    this.#send("A");
  }

  /**
   * Pushes a whole message: MAIL, each RCPT, DATA, the headers, EOH, the
   * body and EOM, stopping at the first answer that ends the message. A
   * recipient refused (4xx or 5xx) is dropped and the others go on, as an
   * MTA does; with none left, the message ends there.
   */
  async message(
    input: MessageInput,
    macros: MessageMacros = {},
  ): Promise<MessageResult> {
    const replies: { stage: string; reply: Reply }[] = [];
    const done = (stage: string, reply: Reply): boolean => {
      replies.push({ stage, reply });
      return endsExchange(reply);
    };
    const early = (): MessageResult => ({ ...replies.at(-1)!, modifications: [], body: null, replies });
    if (done("envfrom", await this.envfrom(input.from, input.fromArgs ?? [], macros.envfrom))) return early();
    let accepted = 0;
    for (const rcpt of input.rcpt) {
      const rcptMacros = typeof macros.envrcpt === "function" ? macros.envrcpt(rcpt, accepted) : macros.envrcpt;
      const reply = await this.envrcpt(rcpt, [], rcptMacros);
      replies.push({ stage: "envrcpt", reply });
      // A refusal (permanent or temporary) is of that recipient only: the MTA goes on with the others.
      if (refusesRecipient(reply)) continue;
      if (endsExchange(reply)) return early();
      accepted++;
    }
    if (accepted === 0) return early();
    if (done("data", await this.data(macros.data))) return early();
    for (const [name, value] of input.headers) {
      if (done("header", await this.header(name, value, macros.header))) return early();
    }
    if (done("eoh", await this.eoh(macros.eoh))) return early();
    const body = await this.body(input.body, macros.body);
    if (body.action !== "skip" && done("body", body)) return early();
    const result = await this.eom(macros.eom);
    replies.push({ stage: "eom", reply: result.reply });
    return { ...result, replies };
  }

  /** Sends QUIT and closes the connection. */
  quit(): void {
    if (!this.#ended) this.#send("Q");
    this.close();
  }

  /**
   * Ends this SMTP session but keeps the milter connection for the next one
   * (`SMFIC_QUIT_NC`): the filter's `close` runs, and the next command is a
   * new {@linkcode connect}, under the negotiation already made.
   */
  quitNc(): void {
    this.#send("K");
  }

  /** Closes the connection without QUIT, as an MTA that vanished would. */
  close(): void {
    this.#ended ??= new MilterClientError("closed", "client closed");
    this.#socket.end();
    this.#socket.destroy();
  }

  /** Resolves when the filter closes the connection (or rejects after the timeout). */
  closed(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#socket.closed) return resolve();
      const { timeout } = this.#limits;
      const cancel = after(timeout, () => {
        reject(new MilterClientError("timeout", `milter kept the connection open for ${timeout} ms`));
      });
      this.#socket.once("close", () => {
        cancel();
        resolve();
      });
      this.#socket.resume(); // the end comes after whatever is still unread
    });
  }
}

/** The replacement body (all `replacebody` chunks joined), or `null` when there is none. */
function replacementBody(modifications: readonly Modification[]): Uint8Array | null {
  const chunks = modifications.flatMap((m) => m.type === "replacebody" ? [m.chunk] : []);
  return chunks.length ? concat(chunks) : null;
}

/**
 * Opens the transport of a milter socket spec.
 *
 * @throws {MilterClientError} `usage` for a bad spec, `connect` when the socket cannot be reached in time.
 */
async function openSocket(spec: string, timeout: number): Promise<Socket> {
  const target = parseSpec(spec);
  return await new Promise((resolve, reject) => {
    const socket = connectTo(target);
    const cancel = after(timeout, () => {
      socket.destroy();
      reject(new MilterClientError("connect", `cannot reach the milter at ${spec} within ${timeout} ms`));
    });
    socket.once("connect", () => {
      cancel();
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once("error", (error) => {
      cancel();
      reject(
        new MilterClientError("connect", `cannot reach the milter at ${spec}: ${error.message}`, { cause: error }),
      );
    });
  });
}

/**
 * Parses `unix:/path`, `local:/path`, `inet:port@host`, `inet6:port@host`
 * or a bare path into where to connect (an inet socket bound to any address
 * is reached on the loopback address of its family).
 *
 * @throws {MilterClientError} `usage` for a spec that is none of these.
 */
export function parseSpec(spec: string): ConnectTarget {
  const socket = parseSocketSpec(spec);
  if (typeof socket === "string") {
    const why = socket === "type" ? "unknown milter socket spec" : `bad ${socket} in`;
    throw new MilterClientError("usage", `${why} ${JSON.stringify(spec)}`);
  }
  return connectTarget(socket);
}
