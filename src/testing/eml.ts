/**
 * A message file (`.eml`, RFC 5322) as an MTA hands it to a milter: the
 * header fields in order, each value the bytes that follow the colon (folded
 * lines joined by `"\n"`, as Postfix sends them), and the body with CRLF line
 * ends. Bytes stay bytes: what the milter receives is what the file holds.
 *
 * Memory: the body costs its size (once more when its line ends change), and
 * each header field 12 bytes of offsets; nothing is kept per line.
 *
 * @module
 */

import { parseAddressList } from "./address.ts";

const CR = 0x0d, LF = 0x0a, SP = 0x20, TAB = 0x09, COLON = 0x3a, NUL = 0;

/**
 * The header fields of a message file as offsets into its bytes, 12 bytes
 * a field however many there are. Iterating gives `[name, value]` views.
 */
export class HeaderFields implements Iterable<[Uint8Array, Uint8Array]> {
  readonly #bytes: Uint8Array;
  /** Per field: where its line starts, where its colon is, where its value (last continuation line) ends. */
  #offsets = new Uint32Array(3 * 16);
  #count = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  /** How many fields there are. */
  get length(): number {
    return this.#count;
  }

  /** Records a field (used while parsing). */
  add(start: number, colon: number, end: number): void {
    if (3 * this.#count === this.#offsets.length) {
      const grown = new Uint32Array(this.#offsets.length * 2);
      grown.set(this.#offsets);
      this.#offsets = grown;
    }
    this.#offsets.set([start, colon, end], 3 * this.#count++);
  }

  /** Moves the end of the last field (a continuation line). */
  extend(end: number): void {
    this.#offsets[3 * this.#count - 1] = end;
  }

  /**
   * Field `i` as `[name, value]`: the name's bytes, and the value's from
   * just after the colon, with each CRLF between its lines as LF.
   */
  field(i: number): [Uint8Array, Uint8Array] {
    const [start, colon, end] = this.#offsets.subarray(3 * i, 3 * i + 3);
    return [this.#bytes.subarray(start, colon), withoutCrBeforeLf(this.#bytes.subarray(colon + 1, end))];
  }

  *[Symbol.iterator](): Iterator<[Uint8Array, Uint8Array]> {
    for (let i = 0; i < this.#count; i++) yield this.field(i);
  }

  /** The values of the fields named `name` (ASCII, any case), in order. */
  *values(name: string): Generator<Uint8Array> {
    const wanted = name.toLowerCase();
    for (const [n, v] of this) if (n.length === wanted.length && ascii(n).toLowerCase() === wanted) yield v;
  }
}

/** A message split into what the milter protocol sends. */
export interface ParsedMessage {
  /** The header fields in order. */
  readonly headers: HeaderFields;
  /** The body, with CRLF line ends. */
  readonly body: Uint8Array;
}

/** ASCII `bytes` (a field name) as text. */
function ascii(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}

/** `bytes` with each CR that comes just before an LF removed (a view of `bytes` when there is none). */
function withoutCrBeforeLf(bytes: Uint8Array): Uint8Array {
  let at = bytes.indexOf(LF);
  if (at < 1 || !bytes.includes(CR)) return bytes;
  const out = new Uint8Array(bytes.length);
  let size = 0, from = 0;
  for (; at >= 0; at = bytes.indexOf(LF, at + 1)) {
    const cut = at > from && bytes[at - 1] === CR ? at - 1 : at;
    out.set(bytes.subarray(from, cut), size);
    size += cut - from;
    from = at;
  }
  out.set(bytes.subarray(from), size);
  return out.subarray(0, size + bytes.length - from);
}

/** `bytes` with each LF that has no CR before it made CRLF (a view of `bytes` when none has to be). */
export function crlf(bytes: Uint8Array): Uint8Array {
  let bare = 0;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === LF && bytes[i - 1] !== CR) bare++;
  if (bare === 0) return bytes;
  const out = new Uint8Array(bytes.length + bare);
  for (let i = 0, j = 0; i < bytes.length; i++) {
    if (bytes[i] === LF && bytes[i - 1] !== CR) out[j++] = CR;
    out[j++] = bytes[i];
  }
  return out;
}

/** Whether `byte` may stand in a field name (RFC 5322 ftext: printable ASCII but the colon). */
const ftext = (byte: number): boolean => byte > SP && byte < 0x7f && byte !== COLON;

/** A line for an error message: its first 60 bytes in quotes, each byte but printable ASCII as `\xHH`. */
function shown(line: Uint8Array): string {
  let text = "";
  for (const byte of line.subarray(0, 60)) {
    const c = String.fromCharCode(byte);
    text += byte < SP || byte > 0x7e
      ? `\\x${byte.toString(16).padStart(2, "0")}`
      : c === '"' || c === "\\"
      ? `\\${c}`
      : c;
  }
  return `"${text}"${line.length > 60 ? "…" : ""}`;
}

/**
 * Checks one header line (`[start, end)`, line end excluded); returns the
 * index of its colon, or -1 for a continuation line.
 *
 * @throws {Error} naming the line when it holds a NUL (the protocol cannot
 * carry one in a header) or is not `name: value`.
 */
function headerLine(bytes: Uint8Array, start: number, end: number, number: number): number {
  const line = bytes.subarray(start, end);
  if (line.includes(NUL)) {
    throw new Error(`line ${number}: a NUL byte, which the milter protocol cannot carry in a header: ${shown(line)}`);
  }
  if (line[0] === SP || line[0] === TAB) return -1;
  const colon = line.indexOf(COLON);
  if (colon <= 0 || !line.subarray(0, colon).every(ftext)) {
    throw new Error(`line ${number}: not a header field (name: value): ${shown(line)}`);
  }
  return start + colon;
}

/**
 * Parses a message file. Header lines end at the first empty line; a line
 * that starts with a space or a tab continues the previous field. Nothing
 * is decoded: header names and values, and the body, are the file's bytes.
 *
 * @throws {Error} naming the line when a header line is not `name: value`
 * (a field name is printable ASCII), holds a NUL byte, or continues no field.
 */
export function parseMessage(bytes: Uint8Array): ParsedMessage {
  const headers = new HeaderFields(bytes);
  let start = 0;
  for (let number = 1; start < bytes.length; number++) {
    const newline = bytes.indexOf(LF, start);
    const next = newline < 0 ? bytes.length : newline + 1;
    const end = newline > start && bytes[newline - 1] === CR ? newline - 1 : newline < 0 ? bytes.length : newline;
    if (end === start) return { headers, body: crlf(bytes.subarray(next)) };
    const colon = headerLine(bytes, start, end, number);
    if (colon >= 0) headers.add(start, colon, end);
    else if (headers.length === 0) throw new Error(`line ${number}: a continuation line before any header field`);
    else headers.extend(end);
    start = next;
  }
  return { headers, body: new Uint8Array(0) };
}

/**
 * A header value as the MTA sends it: without its leading white space,
 * unless the milter negotiated `HDR_LEADSPC` (as Postfix does).
 */
export function headerValue(raw: Uint8Array, leadingSpace: boolean): Uint8Array {
  if (leadingSpace) return raw;
  let at = 0;
  while (raw[at] === SP || raw[at] === TAB) at++;
  return raw.subarray(at);
}

/**
 * The addresses of the address header fields `name` (`From`, `To`, `Cc`),
 * each in angle brackets as SMTP writes them (see {@linkcode parseAddressList}).
 *
 * @throws {Error} naming the field when a value is not UTF-8 or not an RFC 5322 address list.
 */
export function addresses(headers: HeaderFields, name: string): string[] {
  const out: string[] = [];
  for (const value of headers.values(name)) {
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(value);
    } catch {
      throw new Error(`the ${name}: header is not UTF-8`);
    }
    try {
      for (const address of parseAddressList(text)) out.push(address);
    } catch (error) {
      throw new Error(`the ${name}: header ${JSON.stringify(text.trim().slice(0, 80))} is ${(error as Error).message}`);
    }
  }
  return out;
}
