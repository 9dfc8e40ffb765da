/**
 * Quarantine by attachment type: a message carrying a part whose file name
 * has a blocked extension (.exe, .js, …) is put in the MTA's hold queue.
 *
 * The message goes through a real MIME parser as it streams in:
 * `@zone-eu/mailsplit` (Nodemailer's and WildDuck's), with `libmime` to
 * decode names, both npm packages (run `npm install` first). So a name is
 * found however it is written: plain or quoted, split into RFC 2231
 * continuations (`filename*0="evil"; filename*1=".exe"`), percent-encoded
 * in any charset (`filename*=iso-8859-1''r%E9sum%E9.pdf`), as RFC 2047
 * encoded words (`filename="=?UTF-8?B?ZXZpbC5leGU=?="`), behind part-header
 * lines of any length, in a nested message/rfc822, in the `filename` of
 * any Content-Disposition or the `name` of any Content-Type of a part (all
 * are checked: mail readers differ in which they use). Trailing dots and spaces
 * are dropped before the extension is read, as Windows drops them
 * (`evil.exe.` is an .exe).
 *
 * Memory is bounded per message, whatever its size: part bodies are not
 * kept, a body line without a line break is flushed at 64 KiB, and one
 * part's headers may hold at most 1 MiB, 1,000 parts at most. A message past
 * those bounds, or that the parser refuses otherwise, is quarantined too,
 * with the reason: mail that could not be checked is held, not let through.
 *
 *   npx tsx examples/attachments.ts          (or: bun examples/attachments.ts)
 *   deno run --allow-ffi --allow-env --allow-net examples/attachments.ts
 *   BLOCKED_EXTENSIONS=exe,js,iso npx tsx examples/attachments.ts
 *
 * MILTER_SOCKET sets the socket (default inet:8890@127.0.0.1). Postfix, in
 * main.cf:
 *
 *   smtpd_milters = inet:127.0.0.1:8890
 *   milter_default_action = tempfail
 *
 * Held mail shows in `postqueue -p` with a `!`; `postsuper -H <id>` releases
 * it, `postsuper -d <id>` deletes it.
 */

import { type MimeNode, Splitter, type SplitterChunk } from "@zone-eu/mailsplit";
import libmime from "libmime";
import { once } from "node:events";
import process from "node:process";
import type { Writable } from "node:stream";
import { finished } from "node:stream/promises";
import * as Milter from "../mod.ts";

const BLOCKED = new Set(
  (process.env.BLOCKED_EXTENSIONS ?? "exe,scr,com,pif,bat,cmd,js,jse,vbs,vbe,wsf,hta,jar,msi,ps1,lnk,iso")
    .split(",").map((e) => e.trim().toLowerCase()).filter(Boolean),
);

/** A parameter of a structured header value, decoded (RFC 2231 or RFC 2047); null when absent. */
function param(value: string, name: string): string | null {
  const parsed = libmime.parseHeaderValue(value, { stripComments: true });
  const raw = parsed.params[name];
  if (!raw) return null;
  if (parsed.decodedParams?.includes(name)) return raw; // RFC 2231: decoded already
  try {
    return libmime.decodeWords(raw);
  } catch {
    return raw; // an unknown charset: as written
  }
}

/**
 * Every file name a part is given: the `filename` of each Content-Disposition
 * and the `name` of each Content-Type (a hostile part may have two of
 * either, and readers differ in which they use).
 */
function fileNames(node: MimeNode): string[] {
  if (!node.headers) return [];
  const values = (key: string): string[] => node.headers ? node.headers.getDecoded(key).map((h) => h.value) : [];
  return [
    ...values("content-disposition").map((value) => param(value, "filename")),
    ...values("content-type").map((value) => param(value, "name")),
  ].filter((name) => name !== null);
}

/** Whether `name` ends in a blocked extension, once trailing dots and white space are dropped. */
function blocked(name: string): boolean {
  const trimmed = name.replace(/[.\s]+$/u, "");
  const dot = trimmed.lastIndexOf(".");
  return dot >= 0 && BLOCKED.has(trimmed.slice(dot + 1).toLowerCase());
}

/** The first blocked file name a part is given, or null. */
function blockedName(node: MimeNode): string | null {
  return fileNames(node).find(blocked) ?? null;
}

/** A name for the quarantine reason (which Sendmail writes to its queue file): control characters as `?`, 200 at most. */
function printable(text: string): string {
  return text.replace(/\p{Cc}/gu, "?").slice(0, 200);
}

/** How deep attached messages are opened: one deeper is not checked (and so quarantined). */
const MAX_DEPTH = 8;

/** What the scan keeps for one message. */
class Scan {
  /** The first blocked file name found, or null. */
  found: string | null = null;
  /** Why a parser gave up, or null. */
  failed: string | null = null;
  /** One per parser (the message's, and one for each message attached to it): settles when it is done. */
  readonly parsing: Promise<void>[] = [];
  /** The parser of the message itself. */
  readonly splitter: Splitter = parser(this, 0);
}

/**
 * A parser of one message (the whole one at depth 0, or one attached to
 * it) that records in `scan` what it finds. An attached message that the
 * parser does not open itself (as an attachment, or base64-encoded) is
 * decoded into a parser of its own.
 */
function parser(scan: Scan, depth: number): Splitter {
  const splitter = new Splitter();
  let attachedMessage: Writable | null = null;
  const endAttached = (): void => void attachedMessage?.end();
  scan.parsing.push(finished(splitter).then(endAttached, (error: Error) => void (scan.failed ??= error.message)));
  splitter.on("data", (chunk: SplitterChunk) => {
    if (chunk.type === "node") {
      endAttached(); // a new part: the previous one is over
      scan.found ??= blockedName(chunk);
      attachedMessage = chunk.messageNode === false ? opened(scan, chunk, depth + 1) : null;
    } else if (attachedMessage?.writable && !attachedMessage.write(chunk.value)) {
      splitter.pause(); // the attached message's parser is behind: so is this one
      const resume = (): void => void splitter.resume();
      attachedMessage.once("drain", resume).once("close", resume); // closed: its parser gave up
    }
  });
  return splitter;
}

/** Where the body of an attached message goes: its decoder, feeding a parser of its own; null past MAX_DEPTH. */
function opened(scan: Scan, node: MimeNode, depth: number): Writable | null {
  if (depth > MAX_DEPTH) {
    scan.failed ??= `messages attached more than ${MAX_DEPTH} deep`;
    return null;
  }
  const decoder = node.getDecoder();
  const nested = parser(scan, depth);
  decoder.on("error", (error: Error) => void (scan.failed ??= error.message));
  finished(nested).catch(() => decoder.destroy()); // the attached message's parser gave up: so does its decoder
  decoder.pipe(nested);
  return decoder;
}

/** Waits for every parser of the message, those that start meanwhile included. */
async function parsed(scan: Scan): Promise<void> {
  for (let i = 0; i < scan.parsing.length; i++) await scan.parsing[i];
}

/** Feeds the parser; waits while it is behind, so that no more than its buffer waits in memory. */
async function feed(scan: Scan, bytes: Uint8Array): Promise<void> {
  if (scan.found || scan.failed) return; // decided: the rest need not be read
  if (!scan.splitter.write(bytes)) await Promise.race([once(scan.splitter, "drain"), scan.parsing[0]]);
}

const encoder = new TextEncoder();

/** The scan of this connection's message, ended when `drop`. */
function scanOf(ctx: Milter.Ctx, drop = false): Scan | null {
  const scan = Milter.getpriv<Scan>(ctx);
  if (drop) {
    scan?.splitter.destroy();
    Milter.setpriv(ctx, null);
  }
  return scan;
}

Milter.register({
  ...Milter.empty,
  name: "attachments",
  flags: [Milter.Flag.QUARANTINE],
  envfrom: (ctx) => {
    scanOf(ctx, true);
    Milter.setpriv(ctx, new Scan());
    return Milter.Stat.Continue;
  },
  header: async (ctx, name, value) => {
    await feed(scanOf(ctx)!, encoder.encode(`${name}: ${value}\r\n`));
    return Milter.Stat.Continue;
  },
  eoh: async (ctx) => {
    await feed(scanOf(ctx)!, encoder.encode("\r\n"));
    return Milter.Stat.Continue;
  },
  body: async (ctx, chunk) => {
    await feed(scanOf(ctx)!, chunk);
    return Milter.Stat.Continue;
  },
  eom: async (ctx) => {
    const scan = scanOf(ctx)!;
    if (!scan.found && !scan.failed) {
      scan.splitter.end();
      await parsed(scan);
    }
    scanOf(ctx, true);
    if (scan.found) Milter.quarantine(ctx, `blocked attachment ${printable(scan.found)}`);
    else if (scan.failed) Milter.quarantine(ctx, `MIME structure not checked: ${printable(scan.failed)}`);
    return Milter.Stat.Continue;
  },
  abort: (ctx) => {
    scanOf(ctx, true);
    return Milter.Stat.Continue;
  },
  close: (ctx) => {
    scanOf(ctx, true);
    return Milter.Stat.Continue;
  },
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main();
