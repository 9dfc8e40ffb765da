/**
 * An MTA in a box: a milter protocol 6 client that drives any milter over
 * `unix:`, `inet:` or `inet6:` sockets as Postfix or Sendmail would, and
 * reports each reply and, at end of message, the modifications the filter
 * requested. It is how this project tests itself, and how a filter author
 * unit-tests a filter without an MTA.
 *
 * @module
 */

import { connect as netConnect, type Socket } from "node:net";
import { connectHost, parseSocketSpec, type SockAddr } from "../convert.ts";
import { encodeMask, type Flag, FLAG_BITS, type Step, STEP_BITS } from "../variants.ts";
import {
  ALL_ACTIONS,
  ALL_STEPS,
  concat,
  cstrings,
  decodeModification,
  decodeNegotiation,
  decodeReply,
  encodeFrame,
  type Frame,
  type Modification,
  type Negotiated,
  PROTOCOL_VERSION,
  type Reply,
  splitFrames,
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
  /** Milliseconds to wait for each reply. Default 10,000. */
  timeout?: number;
  /**
   * Send stages the filter asked to skip (NO* steps) anyway. Default `false`:
   * like an MTA, the client then does not send them and answers `skipped`.
   */
  sendSkipped?: boolean;
}

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
  /** The header fields in order, as `[name, value]`. */
  headers: [string, string][];
  /** The body, with CRLF line ends (a string is sent as UTF-8). */
  body: Uint8Array | string;
}

/** Macros {@linkcode MilterClient.message} sends before each of its stages. */
export interface MessageMacros {
  /** Sent before MAIL FROM. */
  envfrom?: Macros;
  /** Sent before each RCPT TO. */
  envrcpt?: Macros;
  /** Sent before DATA. */
  data?: Macros;
  /** Sent before end of headers. */
  eoh?: Macros;
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
  readonly #timeout: number;
  readonly #sendSkipped: boolean;
  #buffer: Uint8Array = new Uint8Array(0);
  #frames: Frame[] = [];
  #waiter: (() => void) | null = null;
  #ended: Error | null = null;
  #negotiated: Negotiated | null = null;

  private constructor(socket: Socket, options: ClientOptions) {
    this.#socket = socket;
    this.#timeout = options.timeout ?? 10_000;
    this.#sendSkipped = options.sendSkipped ?? false;
    socket.on("data", (chunk: Uint8Array) => {
      try {
        const [frames, rest] = splitFrames(concat([this.#buffer, chunk]));
        this.#buffer = rest;
        this.#frames.push(...frames);
      } catch (error) {
        this.#ended = error as Error;
        socket.destroy();
      }
      this.#wake();
    });
    socket.on("close", () => {
      this.#ended ??= new Error("milter closed the connection");
      this.#wake();
    });
    socket.on("error", (error) => {
      this.#ended = error;
      this.#wake();
    });
  }

  /**
   * Connects to the milter at `spec` (`unix:/path`, `inet:port@host`,
   * `inet6:port@host`, or a bare path) and negotiates options.
   *
   * @throws {Error} when the connection or the negotiation fails.
   */
  static async open(spec: string, options: ClientOptions = {}): Promise<MilterClient> {
    const socket = await openSocket(spec, options.timeout ?? 10_000);
    const client = new MilterClient(socket, options);
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

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }

  /** The next frame from the filter. */
  async #read(): Promise<Frame> {
    const deadline = Date.now() + this.#timeout;
    while (this.#frames.length === 0) {
      if (this.#ended) throw this.#ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`milter did not answer within ${this.#timeout} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.#frames.shift()!;
  }

  #send(code: string, data?: Uint8Array): void {
    if (this.#ended) throw this.#ended;
    this.#socket.write(encodeFrame(code, data));
  }

  async #negotiate(options: ClientOptions): Promise<void> {
    const actions = Array.isArray(options.actions)
      ? encodeMask(FLAG_BITS, options.actions)
      : options.actions ?? ALL_ACTIONS;
    const steps = Array.isArray(options.steps) ? encodeMask(STEP_BITS, options.steps) : options.steps ?? ALL_STEPS;
    this.#send("O", concat([u32(options.version ?? PROTOCOL_VERSION), u32(actions), u32(steps)]));
    const frame = await this.#read();
    if (frame.code !== "O") throw new Error(`milter answered negotiation with ${JSON.stringify(frame.code)}`);
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
    return await this.#reply();
  }

  async #reply(): Promise<Reply> {
    for (;;) {
      const frame = await this.#read();
      const reply = decodeReply(frame);
      if (reply) return reply;
      if (frame.code !== "p") throw new Error(`milter sent ${JSON.stringify(frame.code)} where a reply was expected`);
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
   * Sends body bytes in chunks of at most 65,535 bytes (as MTAs do); returns
   * the reply to the last chunk sent, stopping early at a reply other than
   * continue.
   */
  async body(content: Uint8Array | string): Promise<Reply> {
    const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content;
    let reply: Reply = { action: "continue" };
    for (let at = 0; at < bytes.length; at += 65535) {
      reply = await this.#command("B", bytes.subarray(at, at + 65535), "NOBODY", "NR_BODY");
      if (reply.action !== "continue" && reply.action !== "noreply") break;
    }
    return reply;
  }

  /** Sends end of message and collects the modifications and the final reply. */
  async eom(macros?: Macros): Promise<EomResult> {
    this.#macros("E", macros);
    this.#send("E");
    const modifications: Modification[] = [];
    for (;;) {
      const frame = await this.#read();
      const reply = decodeReply(frame);
      if (reply) {
        const chunks = modifications.flatMap((m) => m.type === "replacebody" ? [m.chunk] : []);
        return { reply, modifications, body: chunks.length ? concat(chunks) : null };
      }
      const modification = decodeModification(frame);
      if (!modification) throw new Error(`milter sent ${JSON.stringify(frame.code)} at end of message`);
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
      return !["continue", "noreply", "skip"].includes(reply.action);
    };
    const early = (): MessageResult => ({ ...replies.at(-1)!, modifications: [], body: null, replies });
    if (done("envfrom", await this.envfrom(input.from, input.fromArgs ?? [], macros.envfrom))) return early();
    let accepted = 0;
    for (const rcpt of input.rcpt) {
      const reply = await this.envrcpt(rcpt, [], macros.envrcpt);
      replies.push({ stage: "envrcpt", reply });
      if (["continue", "noreply"].includes(reply.action)) accepted++;
      // A refusal (permanent or temporary) is of that recipient only: the MTA goes on with the others.
      else if (!["reject", "tempfail", "replycode"].includes(reply.action)) return early();
    }
    if (accepted === 0) return early();
    if (done("data", await this.data(macros.data))) return early();
    for (const [name, value] of input.headers) if (done("header", await this.header(name, value))) return early();
    if (done("eoh", await this.eoh(macros.eoh))) return early();
    const body = await this.body(input.body);
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

  /** Closes the connection without QUIT, as an MTA that vanished would. */
  close(): void {
    this.#ended ??= new Error("client closed");
    this.#socket.end();
    this.#socket.destroy();
  }

  /** Resolves when the filter closes the connection (or rejects after the timeout). */
  closed(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#socket.closed) return resolve();
      const timer = setTimeout(() => reject(new Error("milter kept the connection open")), this.#timeout);
      this.#socket.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** Opens the transport of a milter socket spec. */
function openSocket(spec: string, timeout: number): Promise<Socket> {
  const target = parseSpec(spec);
  return new Promise((resolve, reject) => {
    const socket = "path" in target ? netConnect(target.path) : netConnect(target.port, target.host);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`cannot connect to ${spec} within ${timeout} ms`));
    }, timeout);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/**
 * Parses `unix:/path`, `local:/path`, `inet:port@host`, `inet6:port@host`
 * or a bare path into where to connect (an inet socket bound to any address
 * is reached on the loopback address of its family).
 */
export function parseSpec(spec: string): {
  /** A unix socket's path. */
  path: string;
} | {
  /** The TCP port. */
  port: number;
  /** The host to connect to. */
  host: string;
} {
  const socket = parseSocketSpec(spec);
  if (socket === "type") throw new Error(`unknown milter socket spec ${JSON.stringify(spec)}`);
  if (socket === "port") throw new Error(`bad port in ${JSON.stringify(spec)}`);
  return socket.kind === "unix" ? { path: socket.path } : { port: socket.port, host: connectHost(socket) };
}
