/**
 * A message file (`.eml`, RFC 5322) as an MTA hands it to a milter: the
 * header fields in order, each value as it follows the colon (folding kept),
 * and the body with CRLF line ends.
 *
 * @module
 */

/** A message split into what the milter protocol sends. */
export interface ParsedMessage {
  /**
   * The header fields in order, as `[name, value]`; the value keeps the space
   * after the colon (see {@linkcode headerValue}).
   */
  readonly headers: [string, string][];
  /** The body, with CRLF line ends. */
  readonly body: Uint8Array;
}

const CR = 0x0d, LF = 0x0a;

/** Splits `bytes` into lines, without their line ends; the last element is what follows the last line end. */
function lines(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== LF) continue;
    out.push(bytes.subarray(start, i > start && bytes[i - 1] === CR ? i - 1 : i));
    start = i + 1;
  }
  out.push(bytes.subarray(start));
  return out;
}

/** Joins lines with CRLF, ending the last one too when `finalEnd`. */
function crlf(parts: readonly Uint8Array[], finalEnd: boolean): Uint8Array {
  const size = parts.reduce((n, p) => n + p.length + 2, 0) - (finalEnd ? 0 : 2);
  const out = new Uint8Array(Math.max(size, 0));
  let at = 0;
  parts.forEach((part, i) => {
    out.set(part, at);
    at += part.length;
    if (finalEnd || i < parts.length - 1) {
      out.set([CR, LF], at);
      at += 2;
    }
  });
  return out;
}

/**
 * Parses a message file. Header lines end at the first empty line; a line
 * that starts with a space or a tab continues the previous field (kept as
 * `"\n"` plus the line, as Postfix sends folded headers). Text is read as
 * UTF-8.
 *
 * @throws {Error} naming the line when a header line is not `name: value`.
 */
export function parseMessage(bytes: Uint8Array): ParsedMessage {
  const all = lines(bytes);
  const decoder = new TextDecoder();
  const headers: [string, string][] = [];
  let i = 0;
  for (; i < all.length; i++) {
    const line = decoder.decode(all[i]);
    if (line === "") {
      i++;
      break;
    }
    if (line[0] === " " || line[0] === "\t") {
      if (headers.length === 0) throw new Error(`line ${i + 1}: a continuation line before any header field`);
      headers[headers.length - 1][1] += `\n${line}`;
      continue;
    }
    const colon = line.indexOf(":");
    if (colon <= 0 || /\s/.test(line.slice(0, colon))) {
      throw new Error(`line ${i + 1}: not a header field (name: value): ${JSON.stringify(line.slice(0, 60))}`);
    }
    headers.push([line.slice(0, colon), line.slice(colon + 1)]);
  }
  const rest = all.slice(i);
  // The element after the last line end is empty when the file ends with one.
  const endsWithNewline = rest.length > 0 && rest[rest.length - 1].length === 0;
  const bodyLines = endsWithNewline ? rest.slice(0, -1) : rest;
  return { headers, body: crlf(bodyLines, endsWithNewline) };
}

/**
 * A header value as the MTA sends it: without its leading white space,
 * unless the milter negotiated `HDR_LEADSPC` (as Postfix does).
 */
export function headerValue(raw: string, leadingSpace: boolean): string {
  return leadingSpace ? raw : raw.replace(/^[ \t]+/, "");
}

/**
 * The addresses of an address header value (`From`, `To`, `Cc`), each in
 * angle brackets as SMTP writes them: `Alice <a@example.org>, b@example.net`
 * gives `["<a@example.org>", "<b@example.net>"]`. Quoted display names and
 * comments are skipped; group syntax is not handled.
 */
export function addresses(value: string): string[] {
  const out: string[] = [];
  const cleaned = value.replace(/"(?:[^"\\]|\\.)*"/g, '""').replace(/\([^()]*\)/g, "");
  for (const part of cleaned.split(",")) {
    const angle = part.match(/<([^<>]*)>/);
    const bare = angle ? angle[1].trim() : part.trim();
    if (bare.includes("@") && !/\s/.test(bare)) out.push(`<${bare}>`);
  }
  return out;
}
