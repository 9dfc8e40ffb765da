/**
 * Recipient rewrite: recipients found in an alias table are replaced, at end
 * of message, by the addresses they stand for (delrcpt + addrcpt). The table
 * is a JSON file mapping an address to a list of addresses.
 *
 *   ALIASES=/etc/milter/aliases.json npx tsx examples/alias.ts
 *
 *   aliases.json: { "sales@example.org": ["alice@example.org", "bob@example.org"] }
 *
 * The table is checked when the filter starts. A file that is not JSON, a
 * key that is not an address or is given twice, or a value that is not a
 * non-empty list of addresses (`"alice@example.org"` where
 * `["alice@example.org"]` belongs) stops the filter with one line naming the
 * file and the key (exit code 78). An address here is `local@domain` without
 * angle brackets, white space or control characters.
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
import { fail } from "./settings.ts";

/** `local@domain`: one `@`, something on each side, no brackets, white space or control characters. */
const ADDRESS = /^[^\s\p{Cc}<>@]+@[^\s\p{Cc}<>@]+$/u;

/** The contents of `file` as JSON; stops the filter when it cannot be read or parsed. */
function readJson(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    return fail(`cannot read ALIASES=${file}: ${(error as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    return fail(`ALIASES=${file} is not JSON: ${(error as Error).message}`);
  }
}

/**
 * The alias table in `file`: address (lower case) → its replacements. Stops
 * the filter, naming the key, at the first entry that is not an address
 * mapped to a non-empty list of addresses.
 */
function loadAliases(file: string): Map<string, string[]> {
  const table = readJson(file);
  if (typeof table !== "object" || table === null || Array.isArray(table)) {
    fail(`ALIASES=${file} must hold one JSON object mapping addresses to lists of addresses`);
  }
  const aliases = new Map<string, string[]>();
  for (const [from, to] of Object.entries(table)) {
    const where = `ALIASES=${file}: ${JSON.stringify(from)}`;
    if (!ADDRESS.test(from)) fail(`${where} is not an address (local@domain)`);
    if (!Array.isArray(to) || to.length === 0) {
      fail(`${where} must map to a non-empty list of addresses, got ${JSON.stringify(to)}`);
    }
    const bad = to.find((target) => typeof target !== "string" || !ADDRESS.test(target));
    if (bad !== undefined) fail(`${where} maps to ${JSON.stringify(bad)}, which is not an address (local@domain)`);
    if (aliases.has(from.toLowerCase())) fail(`${where} is given twice (addresses are compared in lower case)`);
    aliases.set(from.toLowerCase(), to);
  }
  return aliases;
}

/** address (lower case, no angle brackets) → its replacements. */
const aliases = loadAliases(process.env.ALIASES ?? "aliases.json");

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
