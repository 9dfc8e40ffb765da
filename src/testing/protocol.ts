/**
 * The milter wire protocol (version 6) as the MTA speaks it: framing,
 * command encoding and the decoding of the filter's answers. Pure functions
 * over bytes.
 *
 * @module
 */

import { decodeMask, type Flag, FLAG_BITS, type Stage, STAGE_CODES, type Step, STEP_BITS } from "../variants.ts";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 6;
/** Every action of protocol 6 (SMFI_CURR_ACTS). */
export const ALL_ACTIONS = 0x1ff;
/** Every protocol step of protocol 6 (SMFI_CURR_PROT), as Postfix offers. */
export const ALL_STEPS = 0x1fffff;
/** Frames larger than this are refused as garbage. */
export const MAX_FRAME = 64 * 1024 * 1024;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One protocol frame: a command or reply letter and its payload. */
export interface Frame {
  readonly code: string;
  readonly data: Uint8Array;
}

/** Encodes a frame: 32-bit big-endian length (letter included), letter, payload. */
export function encodeFrame(code: string, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(5 + data.length);
  new DataView(out.buffer).setUint32(0, data.length + 1);
  out[4] = code.charCodeAt(0);
  out.set(data, 5);
  return out;
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
 * @throws {Error} for a frame longer than {@linkcode MAX_FRAME} or of length 0.
 */
export function splitFrames(buffer: Uint8Array): [Frame[], Uint8Array] {
  const frames: Frame[] = [];
  let at = 0;
  while (buffer.length - at >= 4) {
    const len = new DataView(buffer.buffer, buffer.byteOffset + at, 4).getUint32(0);
    if (len === 0 || len > MAX_FRAME) throw new Error(`milter protocol: bad frame length ${len}`);
    if (buffer.length - at - 4 < len) break;
    frames.push({ code: String.fromCharCode(buffer[at + 4]), data: buffer.slice(at + 5, at + 4 + len) });
    at += 4 + len;
  }
  return [frames, buffer.subarray(at)];
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

/** Decodes the filter's `O` reply. */
export function decodeNegotiation(data: Uint8Array): Negotiated {
  if (data.length < 12) throw new Error(`milter protocol: option reply of ${data.length} bytes`);
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

/** Decodes a modification frame, or `null` if `code` is not one. */
export function decodeModification(frame: Frame): Modification | null {
  const { code, data } = frame;
  const index = (): number => new DataView(data.buffer, data.byteOffset, 4).getUint32(0);
  switch (code) {
    case "h": {
      const [name, value] = splitCStrings(data);
      return { type: "addheader", name, value: value ?? "" };
    }
    case "i":
    case "m": {
      const [name, value] = splitCStrings(data.subarray(4));
      return { type: code === "i" ? "insheader" : "chgheader", index: index(), name, value: value ?? "" };
    }
    case "+":
      return { type: "addrcpt", rcpt: splitCStrings(data)[0] };
    case "2": {
      const [rcpt, args] = splitCStrings(data);
      return { type: "addrcpt_par", rcpt, args: args ?? null };
    }
    case "-":
      return { type: "delrcpt", rcpt: splitCStrings(data)[0] };
    case "b":
      return { type: "replacebody", chunk: data };
    case "e": {
      const [from, args] = splitCStrings(data);
      return { type: "chgfrom", from, args: args ?? null };
    }
    case "q":
      return { type: "quarantine", reason: splitCStrings(data)[0] ?? "" };
    case "p":
      return { type: "progress" };
    default:
      return null;
  }
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

const ACTIONS: Readonly<Record<string, Action>> = {
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

/** Decodes a reply frame, or `null` if `code` is not a reply. */
export function decodeReply(frame: Frame): Reply | null {
  const action = ACTIONS[frame.code];
  if (!action) return null;
  if (action !== "replycode") return { action };
  const text = splitCStrings(frame.data)[0] ?? "";
  return { action, text, smtpCode: Number(text.slice(0, 3)) };
}
