/**
 * Recipient rewrite: recipients found in an alias table are replaced, at end
 * of message, by the addresses they stand for (delrcpt + addrcpt). The table
 * is a JSON file mapping an address to a list of addresses.
 *
 *   ALIASES=/etc/milter/aliases.json npx tsx examples/alias.ts
 *
 *   aliases.json: { "sales@example.org": ["alice@example.org", "bob@example.org"] }
 *
 * MILTER_SOCKET sets the socket (default inet:8890@127.0.0.1). Postfix, in
 * main.cf:
 *
 *   smtpd_milters = inet:127.0.0.1:8890
 *   milter_default_action = tempfail
 *   # the rewritten recipients are delivered as if given at RCPT TO
 */

import { readFileSync } from "node:fs";
import process from "node:process";
import * as Milter from "../mod.ts";

/** address (lower case, no angle brackets) → its replacements. */
const aliases = new Map<string, string[]>(
  Object.entries(JSON.parse(readFileSync(process.env.ALIASES ?? "aliases.json", "utf8")) as Record<string, string[]>)
    .map(([from, to]) => [from.toLowerCase(), to]),
);

/** `<Bob@Example.org>` → `bob@example.org`. */
const bare = (address: string): string => address.replace(/^<|>$/g, "").toLowerCase();

Milter.register({
  ...Milter.empty,
  name: "alias",
  flags: [Milter.Flag.ADDRCPT, Milter.Flag.DELRCPT],
  envfrom: (ctx) => {
    Milter.setpriv(ctx, [] as string[]); // the recipients of this message that have an alias
    return Milter.Stat.Continue;
  },
  envrcpt: (ctx, rcpt) => {
    if (aliases.has(bare(rcpt))) Milter.getpriv<string[]>(ctx)!.push(rcpt);
    return Milter.Stat.Continue;
  },
  eom: (ctx) => {
    for (const rcpt of Milter.getpriv<string[]>(ctx) ?? []) {
      Milter.delrcpt(ctx, rcpt);
      for (const target of aliases.get(bare(rcpt))!) Milter.addrcpt(ctx, `<${target}>`);
    }
    return Milter.Stat.Continue;
  },
  abort: (ctx) => {
    Milter.setpriv(ctx, null);
    return Milter.Stat.Continue;
  },
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main();
