/**
 * The milter wire protocol (version 6) as the MTA speaks it: framing,
 * command encoding and the decoding of the filter's answers. Pure functions
 * over bytes.
 *
 * @module
 */

import { SMFI_CURR_ACTS } from "../../ffi/constants.ts";
import { decodeMask, type Flag, FLAG_BITS, type Stage, STAGE_CODES, type Step, STEP_BITS } from "../variants.ts";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 6;
/** Every action of protocol 6 (SMFI_CURR_ACTS). */
export const ALL_ACTIONS: number = SMFI_CURR_ACTS;
/** Every protocol step of protocol 6 (SMFI_CURR_PROT), as Postfix offers. */
export const ALL_STEPS = 0x1fffff;
/**
 * The default largest frame the client accepts from a milter: 64 MiB. What
 * libmilter sends is far smaller (body replacements go in chunks of 65,535
 * bytes, and the largest data size it can negotiate is 1 MiB − 1); only a
 * header value has no bound of its own. 64 times that leaves room for any
 * real filter while bounding what one length prefix can make the client hold.
 */
export const MAX_FRAME = 64 * 1024 * 1024;

/** Why the test client failed. */
export type ClientErrorKind =
  /** A bad argument: a socket spec that is not one, an option out of range. */
  | "usage"
  /** The milter's socket could not be reached. */
  | "connect"
  /** The connection ended (the milter closed it, or the client did). */
  | "closed"
  /** The milter gave no final reply to a stage within the timeout. */
  | "timeout"
  /** The milter sent something the protocol does not allow there. */
  | "protocol"
  /** The milter sent more than the client's limits allow (`maxFrame`, `maxModifications`, …). */
  | "limit";

/**
 * Raised by the test client on every failure, with what kind of failure it
 * is; the message says what happened, e.g. `malformed insheader frame from
 * the milter: 2 bytes "\u0000\u0000", expected a 4-byte index and 2
 * NUL-terminated strings`.
 */
export class MilterClientError extends Error {
  /** Always `"MilterClientError"`. */
  override name = "MilterClientError";
  /** What kind of failure this is. */
  readonly kind: ClientErrorKind;

  constructor(kind: ClientErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.kind = kind;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One protocol frame: a command or reply letter and its payload. */
export interface Frame {
  readonly code: string;
  readonly data: Uint8Array;
}

/** The first 5 bytes of a frame whose payload is `size` bytes: 32-bit big-endian length (letter included), letter. */
export function frameHead(code: string, size: number): Uint8Array {
  const out = new Uint8Array(5);
  new DataView(out.buffer).setUint32(0, size + 1);
  out[4] = code.charCodeAt(0);
  return out;
}

/** Encodes a frame: its head (see {@linkcode frameHead}), then its payload. */
export function encodeFrame(code: string, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  return concat([frameHead(code, data.length), data]);
}

/** Concatenates byte arrays. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** NUL-terminated strings (UTF-8) or raw byte strings, back to back. */
export function cstrings(...values: readonly (string | Uint8Array)[]): Uint8Array {
  return concat(values.map((v) => typeof v === "string" ? encoder.encode(`${v}\0`) : concat([v, new Uint8Array(1)])));
}

/** A 32-bit big-endian unsigned integer. */
export function u32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value >>> 0);
  return out;
}

/**
 * Splits as many complete frames as `buffer` holds; returns them with the
 * unconsumed rest.
 *
 * @throws {MilterClientError} for a frame longer than `maxFrame` or of length 0.
 */
export function splitFrames(buffer: Uint8Array, maxFrame: number = MAX_FRAME): [Frame[], Uint8Array] {
  const frames: Frame[] = [];
  let at = 0;
  while (buffer.length - at >= 4) {
    const len = new DataView(buffer.buffer, buffer.byteOffset + at, 4).getUint32(0);
    checkFrameLength(len, maxFrame);
    if (buffer.length - at - 4 < len) break;
    frames.push({ code: String.fromCharCode(buffer[at + 4]), data: buffer.slice(at + 5, at + 4 + len) });
    at += 4 + len;
  }
  return [frames, buffer.subarray(at)];
}

/**
 * Checks a frame's length prefix (the letter included): 0 is no frame, and
 * more than `maxFrame` is refused before any of its bytes are buffered.
 *
 * @throws {MilterClientError} `protocol` for 0, `limit` over `maxFrame`.
 */
export function checkFrameLength(len: number, maxFrame: number): void {
  if (len === 0) throw new MilterClientError("protocol", "milter protocol: bad frame length 0");
  if (len > maxFrame) {
    throw new MilterClientError("limit", `milter sent a frame of ${len} bytes, over maxFrame (${maxFrame} bytes)`);
  }
}

/**
 * Reassembles frames from the chunks a socket delivers. Chunks wait in a list
 * until a whole frame is there, which is then copied once: receiving a frame
 * costs its size, whatever the number of chunks it came in. A length prefix
 * over `maxFrame` fails as soon as it is read.
 */
export class FrameReader {
  readonly #maxFrame: number;
  #chunks: Uint8Array[] = [];
  #size = 0;
  /** The length (letter and payload) of the frame being received, once its prefix is read. */
  #need: number | null = null;

  constructor(maxFrame: number = MAX_FRAME) {
    this.#maxFrame = maxFrame;
  }

  /**
   * Takes one chunk; returns the frames it completes.
   *
   * @throws {MilterClientError} for a bad length prefix (see {@linkcode checkFrameLength}).
   */
  push(chunk: Uint8Array): Frame[] {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#size += chunk.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (this.#need === null) {
        if (this.#size < 4) break;
        const len = new DataView(this.#take(4).buffer).getUint32(0);
        checkFrameLength(len, this.#maxFrame);
        this.#need = len;
      }
      if (this.#size < this.#need) break;
      const frame = this.#take(this.#need);
      this.#need = null;
      frames.push({ code: String.fromCharCode(frame[0]), data: frame.subarray(1) });
    }
    return frames;
  }

  /** Moves the first `n` buffered bytes into a new array. */
  #take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let at = 0, i = 0;
    while (at < n) {
      const chunk = this.#chunks[i];
      const part = chunk.subarray(0, n - at);
      out.set(part, at);
      at += part.length;
      if (part.length === chunk.length) i++;
      else this.#chunks[i] = chunk.subarray(part.length);
    }
    this.#chunks.splice(0, i);
    this.#size -= n;
    return out;
  }
}

/** Splits a payload of NUL-terminated strings. */
export function splitCStrings(data: Uint8Array): string[] {
  const text = decoder.decode(data);
  const parts = text.split("\0");
  if (parts.at(-1) === "") parts.pop();
  return parts;
}

/** What the filter agreed to in option negotiation. */
export interface Negotiated {
  /** The milter protocol version the filter answered with (6 for libmilter 8.14 and later). */
  readonly version: number;
  /** The actions the filter may take. */
  readonly actions: Flag[];
  /** The steps the filter asked for (NO* = do not send, NR_* = no reply). */
  readonly steps: Step[];
  /** {@linkcode Negotiated.actions} as libmilter's bit mask (`SMFIF_*`). */
  readonly actionMask: number;
  /** {@linkcode Negotiated.steps} as libmilter's bit mask (`SMFIP_*`). */
  readonly stepMask: number;
  /** The macros the filter requested per stage with setsymlist. */
  readonly macros: Partial<Record<Stage, string>>;
}

/**
 * Decodes the filter's `O` reply.
 *
 * @throws {MilterClientError} `protocol` for a reply shorter than 12 bytes.
 */
export function decodeNegotiation(data: Uint8Array): Negotiated {
  if (data.length < 12) {
    throw malformed("negotiation", `${data.length} bytes, expected at least 12 (version, actions, steps)`);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.length);
  const actionMask = view.getUint32(4), stepMask = view.getUint32(8);
  const macros: Partial<Record<Stage, string>> = {};
  const stageByCode = new Map(Object.entries(STAGE_CODES).map(([k, v]) => [v, k as Stage]));
  for (let at = 12; at + 4 <= data.length;) {
    const stage = stageByCode.get(view.getUint32(at));
    const end = data.indexOf(0, at + 4);
    const list = decoder.decode(data.subarray(at + 4, end < 0 ? data.length : end));
    if (stage) macros[stage] = list;
    at = end < 0 ? data.length : end + 1;
  }
  return {
    version: view.getUint32(0),
    actions: decodeMask(FLAG_BITS, actionMask),
    steps: decodeMask(STEP_BITS, stepMask),
    actionMask,
    stepMask,
    macros,
  };
}

/** A modification the filter requested at end of message. */
export type Modification =
  | {
    /** `addheader`: a header added at the end. */
    readonly type: "addheader";
    /** The header name. */
    readonly name: string;
    /** The header value. */
    readonly value: string;
  }
  | {
    /** `insheader`: a header inserted at a position. */
    readonly type: "insheader";
    /** Where, counting from 0 at the top. */
    readonly index: number;
    /** The header name. */
    readonly name: string;
    /** The header value. */
    readonly value: string;
  }
  | {
    /** `chgheader`: the index-th header of that name changed, or deleted when `value` is empty. */
    readonly type: "chgheader";
    /** Which occurrence of the name, from 1. */
    readonly index: number;
    /** The header name. */
    readonly name: string;
    /** The new value; `""` deletes the header. */
    readonly value: string;
  }
  | {
    /** `addrcpt`: a recipient added. */
    readonly type: "addrcpt";
    /** The address. */
    readonly rcpt: string;
  }
  | {
    /** `addrcpt_par`: a recipient added with ESMTP arguments. */
    readonly type: "addrcpt_par";
    /** The address. */
    readonly rcpt: string;
    /** Its ESMTP arguments, or `null`. */
    readonly args: string | null;
  }
  | {
    /** `delrcpt`: a recipient removed. */
    readonly type: "delrcpt";
    /** The address, as given at RCPT TO. */
    readonly rcpt: string;
  }
  | {
    /** `replacebody`: one chunk of the new body (chunks concatenate). */
    readonly type: "replacebody";
    /** The bytes of this chunk. */
    readonly chunk: Uint8Array;
  }
  | {
    /** `chgfrom`: the envelope sender changed. */
    readonly type: "chgfrom";
    /** The new sender. */
    readonly from: string;
    /** Its ESMTP arguments, or `null`. */
    readonly args: string | null;
  }
  | {
    /** `quarantine`: the message is to be held. */
    readonly type: "quarantine";
    /** The reason given. */
    readonly reason: string;
  }
  | {
    /** `progress`: the filter is still working; the MTA resets its timeout. */
    readonly type: "progress";
  };

/** How a modification frame's payload is laid out. */
interface Layout {
  /** What the frame asks for. */
  readonly type: Exclude<Modification["type"], "replacebody">;
  /** Whether a 32-bit index comes first. */
  readonly indexed: boolean;
  /** How many NUL-terminated strings follow: at least, at most. */
  readonly strings: readonly [number, number];
}

/** The MTA's commands by letter, as the milter protocol names them (`SMFIC_*`, lower case). */
export const COMMAND_NAMES: Readonly<Record<string, string>> = {
  O: "negotiate",
  D: "macros",
  C: "connect",
  H: "helo",
  M: "envfrom",
  R: "envrcpt",
  T: "data",
  L: "header",
  N: "eoh",
  B: "body",
  E: "eom",
  A: "abort",
  Q: "quit",
  K: "quit_nc",
  U: "unknown",
};

/** The layout of each modification frame but `b` (replacebody, raw bytes), by letter (libmilter's smfi.c). */
const LAYOUTS: Readonly<Record<string, Layout>> = {
  h: { type: "addheader", indexed: false, strings: [2, 2] },
  i: { type: "insheader", indexed: true, strings: [2, 2] },
  m: { type: "chgheader", indexed: true, strings: [2, 2] },
  "+": { type: "addrcpt", indexed: false, strings: [1, 1] },
  "2": { type: "addrcpt_par", indexed: false, strings: [1, 2] },
  "-": { type: "delrcpt", indexed: false, strings: [1, 1] },
  e: { type: "chgfrom", indexed: false, strings: [1, 2] },
  q: { type: "quarantine", indexed: false, strings: [1, 1] },
  p: { type: "progress", indexed: false, strings: [0, 0] },
};

/** What each frame the filter can send is, by letter: `negotiate`, a reply's action, or a modification's type. */
export const FILTER_FRAME_NAMES: Readonly<Record<string, string>> = Object.freeze({
  O: "negotiate",
  ...Object.fromEntries(Object.entries(LAYOUTS).map(([code, layout]) => [code, layout.type])),
  b: "replacebody",
});

/**
 * The NUL-terminated strings that make up all of `data`, or `null` unless
 * there are `min` to `max` of them and nothing after the last NUL.
 */
function fields(data: Uint8Array, [min, max]: readonly [number, number]): string[] | null {
  if (data.length === 0) return min === 0 ? [] : null;
  if (data[data.length - 1] !== 0) return null;
  const parts = decoder.decode(data.subarray(0, -1)).split("\0");
  return parts.length >= min && parts.length <= max ? parts : null;
}

/** What a layout's payload should be, for the error message. */
function expected({ indexed, strings: [min, max] }: Layout): string {
  const count = min === max ? `${min}` : `${min} or ${max}`;
  const strings = max === 0 ? "no payload" : `${count} NUL-terminated string${max === 1 ? "" : "s"}`;
  return indexed ? `a 4-byte index and ${strings}` : strings;
}

/** The error for a frame of `name` whose payload is not what the protocol says. */
function malformed(name: string, detail: string): MilterClientError {
  return new MilterClientError("protocol", `malformed ${name} frame from the milter: ${detail}`);
}

/** A payload, shortened, for an error message. */
function preview(data: Uint8Array): string {
  const text = JSON.stringify(decoder.decode(data.subarray(0, 60)));
  return `${data.length} bytes ${text}${data.length > 60 ? "…" : ""}`;
}

/** Builds the modification of a layout's type from its index and strings. */
function modification(type: Layout["type"], index: number, s: readonly string[]): Modification {
  switch (type) {
    case "addheader":
      return { type, name: s[0], value: s[1] };
    case "insheader":
    case "chgheader":
      return { type, index, name: s[0], value: s[1] };
    case "addrcpt":
    case "delrcpt":
      return { type, rcpt: s[0] };
    case "addrcpt_par":
      return { type, rcpt: s[0], args: s[1] ?? null };
    case "chgfrom":
      return { type, from: s[0], args: s[1] ?? null };
    case "quarantine":
      return { type, reason: s[0] };
    case "progress":
      return { type };
  }
}

/**
 * Decodes a modification frame, or `null` if `code` is not one.
 *
 * @throws {MilterClientError} `protocol` when the payload is not laid out as
 * libmilter lays out that frame (`malformed insheader frame from the milter: …`).
 */
export function decodeModification(frame: Frame): Modification | null {
  const { code, data } = frame;
  if (code === "b") return { type: "replacebody", chunk: data };
  const layout = LAYOUTS[code];
  if (!layout) return null;
  const head = layout.indexed ? 4 : 0;
  const strings = data.length >= head ? fields(data.subarray(head), layout.strings) : null;
  if (!strings) throw malformed(layout.type, `${preview(data)}, expected ${expected(layout)}`);
  const index = layout.indexed ? new DataView(data.buffer, data.byteOffset, 4).getUint32(0) : 0;
  return modification(layout.type, index, strings);
}

/** The filter's answer to one command. */
export type Action =
  | "continue"
  | "accept"
  | "reject"
  | "tempfail"
  | "discard"
  | "skip"
  | "replycode"
  | "connfail"
  | "shutdown"
  | "noreply";

/** A reply to one command, as the MTA sees it. */
export interface Reply {
  /** What the filter answered; `"noreply"` for a step negotiated as NR_*. */
  readonly action: Action;
  /** For `replycode`: the full SMTP reply text (`"550 5.7.1 No"`, lines joined by CRLF). */
  readonly text?: string;
  /** For `replycode`: the 3-digit SMTP code. */
  readonly smtpCode?: number;
  /** `true` when the filter had asked the MTA not to send this stage, so nothing was sent. */
  readonly skipped?: boolean;
}

/** The action of each reply frame, by letter. */
export const ACTIONS: Readonly<Record<string, Action>> = {
  c: "continue",
  a: "accept",
  r: "reject",
  t: "tempfail",
  d: "discard",
  s: "skip",
  y: "replycode",
  f: "connfail",
  "4": "shutdown",
};

/**
 * Whether `text` is an SMTP reply an MTA takes from a milter: each line a
 * 4xx or 5xx code, the same on every line, then a space or a dash (lines
 * joined by CRLF, as `smfi_setmlreply` joins them), and no CR or LF but in
 * those CRLFs (a bare one would start a line of the milter's making, as
 * libmilter's `smfi_setreply` refuses).
 */
export function isSmtpReply(text: string): boolean {
  const code = text.slice(0, 3);
  return /^[45]\d\d$/.test(code) &&
    text.split("\r\n").every((line) => /^\d{3}[ -][^\r\n]*$/.test(line) && line.startsWith(code));
}

/**
 * Decodes a reply frame, or `null` if `code` is not a reply.
 *
 * @throws {MilterClientError} `protocol` for a `replycode` whose text is not
 * an SMTP reply (see {@linkcode isSmtpReply}).
 */
export function decodeReply(frame: Frame): Reply | null {
  const action = ACTIONS[frame.code];
  if (!action) return null;
  if (action !== "replycode") return { action };
  const text = fields(frame.data, [1, 1])?.[0];
  if (text === undefined) throw malformed("replycode", `${preview(frame.data)}, expected 1 NUL-terminated string`);
  if (!isSmtpReply(text)) {
    throw malformed(
      "replycode",
      `${JSON.stringify(text)} is not an SMTP reply (a 4xx or 5xx code, then a space or a dash)`,
    );
  }
  return { action, text, smtpCode: Number(text.slice(0, 3)) };
}

/**
 * Whether a reply ends the exchange it answers: anything but `continue`,
 * `noreply` and `skip`. `accept` ends it too: the milter wants to see no
 * more of that connection (from connect or HELO) or of that message (from a
 * later stage), and an MTA sends it nothing more of it.
 */
export function endsExchange(reply: Reply): boolean {
  return reply.action !== "continue" && reply.action !== "noreply" && reply.action !== "skip";
}

/**
 * Whether a reply to RCPT TO refuses only that recipient (`reject`,
 * `tempfail` or a `replycode`): the MTA goes on with the others.
 */
export function refusesRecipient(reply: Reply): boolean {
  return reply.action === "reject" || reply.action === "tempfail" || reply.action === "replycode";
}
