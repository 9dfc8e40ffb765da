/**
 * Quarantine by attachment type: a message carrying an attachment whose
 * file name has a blocked extension (.exe, .js, …) is put in the MTA's hold
 * queue. The body is scanned as it streams in, chunk by chunk, keeping only
 * the unfinished last line of each chunk, so a 50 MB message costs no more
 * memory than a small one.
 *
 *   npx tsx examples/attachments.ts
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

import process from "node:process";
import * as Milter from "../mod.ts";

const BLOCKED = new Set(
  (process.env.BLOCKED_EXTENSIONS ?? "exe,scr,com,pif,bat,cmd,js,jse,vbs,vbe,wsf,hta,jar,msi,ps1,lnk,iso")
    .split(",").map((e) => e.trim().toLowerCase()).filter(Boolean),
);
/** Longest unfinished line kept between chunks (base64 lines are 76 bytes; headers are short). */
const MAX_CARRY = 8192;

/** The file name in a MIME header line (`name=`, `filename=`, RFC 2231 `filename*=`), or null. */
function fileName(line: string): string | null {
  const match = line.match(/\b(?:file)?name\*?(?:\d+\*?)?=\s*(?:"([^"]*)"|([^;\s]+))/i);
  if (!match) return null;
  const value = match[1] ?? match[2];
  return decodeURIComponent(value.slice(value.lastIndexOf("'") + 1).replace(/%(?![0-9a-f]{2})/gi, "%25"));
}

/** Whether `name` ends in a blocked extension. */
function blocked(name: string): boolean {
  const dot = name.lastIndexOf(".");
  return dot >= 0 && BLOCKED.has(name.slice(dot + 1).trim().toLowerCase());
}

/** What the scanner keeps for one message. */
interface Scan {
  carry: string;
  inPartHeaders: boolean;
  found: string | null;
}

/** Feeds one body chunk to the scanner. */
function scan(state: Scan, chunk: Uint8Array): void {
  // latin1 maps every byte to one character, so no chunk boundary can split a character.
  const lines = (state.carry + new TextDecoder("latin1").decode(chunk)).split("\n");
  state.carry = lines.pop()!.slice(-MAX_CARRY);
  for (const raw of lines) {
    if (state.found) return;
    const line = raw.replace(/\r$/, "");
    if (line.startsWith("--")) state.inPartHeaders = true; // a MIME boundary: part headers follow
    else if (line === "") state.inPartHeaders = false;
    else if (state.inPartHeaders) {
      const name = fileName(line);
      if (name && blocked(name)) state.found = name;
    }
  }
}

const newScan = (): Scan => ({ carry: "", inPartHeaders: false, found: null });

Milter.register({
  ...Milter.empty,
  name: "attachments",
  flags: [Milter.Flag.QUARANTINE],
  envfrom: (ctx) => {
    Milter.setpriv(ctx, newScan());
    return Milter.Stat.Continue;
  },
  header: (ctx, name, value) => {
    // A single-part message names its file in the top-level headers.
    const state = Milter.getpriv<Scan>(ctx)!;
    if (/^content-(type|disposition)$/i.test(name)) {
      const file = fileName(value);
      if (file && blocked(file)) state.found = file;
    }
    return Milter.Stat.Continue;
  },
  body: (ctx, chunk) => {
    scan(Milter.getpriv<Scan>(ctx)!, chunk);
    return Milter.Stat.Continue;
  },
  eom: (ctx) => {
    const state = Milter.getpriv<Scan>(ctx)!;
    if (state.carry) scan(state, new TextEncoder().encode("\n")); // the last line
    if (state.found) Milter.quarantine(ctx, `blocked attachment ${state.found}`);
    Milter.setpriv(ctx, null);
    return Milter.Stat.Continue;
  },
  abort: (ctx) => {
    Milter.setpriv(ctx, null);
    return Milter.Stat.Continue;
  },
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main();
