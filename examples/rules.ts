/**
 * Reject by rules: refuse mail by HELO name, sender or subject, each with its
 * own SMTP reply. The rules are data; edit them to taste.
 *
 *   npx tsx examples/rules.ts          (or: bun examples/rules.ts)
 *   deno run --allow-ffi --allow-env --allow-net examples/rules.ts
 *
 * A subject is matched as a reader sees it, not as it travels: unfolded,
 * its RFC 2047 encoded words decoded (libmime, an npm package: run `npm
 * install` first), compatibility forms folded (NFKC: full-width letters as
 * ASCII), invisible format characters (zero-width spaces) dropped, and each
 * run of white space as one space. So `Cheap  pills`, a folded `Cheap` /
 * `pills` and `=?UTF-8?B?Q2hlYXAgcGlsbHM=?=` all match `cheap pills`.
 *
 * MILTER_SOCKET sets the socket (default inet:8890@127.0.0.1). Postfix, in
 * main.cf:
 *
 *   smtpd_milters = inet:127.0.0.1:8890
 *   milter_default_action = tempfail
 *
 * Postfix passes the reply through: a client whose HELO is refused sees
 * `550 5.7.1 <helo> is not a valid host name for this server`.
 *
 * MILTER_RULES names a JSON file of rules to use instead of those below,
 * `[{ "on": "sender", "match": "@spam\\.example>$", "flags": "i",
 * "reply": ["550", "5.7.1", "not from %s"] }]`, read again on SIGHUP
 * (`systemctl reload`, `kill -HUP`): connections that start afterwards use
 * the new rules, open ones finish on theirs; a file that does not read as
 * rules leaves the rules in place and says why on stderr (at start, it
 * stops the filter with exit code 78). MILTER_LOG=text
 * writes one line per message on stderr, MILTER_METRICS (e.g.
 * inet:9464@127.0.0.1) serves Prometheus metrics.
 */

import libmime from "libmime";
import { readFileSync } from "node:fs";
import process from "node:process";
import * as Milter from "../mod.ts";
import { fail } from "./settings.ts";

interface Rule {
  /** What the rule looks at. */
  on: "helo" | "sender" | "subject";
  match: RegExp;
  /** The SMTP reply: code, enhanced status code, text (`%` written as `%%`). */
  reply: [string, string, string];
}

const BUILT_IN: Rule[] = [
  {
    on: "helo",
    match: /^(localhost|\[?127\.0\.0\.1\]?)$/i,
    reply: ["550", "5.7.1", "%s is not a valid host name for this server"],
  },
  {
    on: "sender",
    match: /@(spam\.example|junk\.example)>$/i,
    reply: ["550", "5.7.1", "mail from %s is not accepted here"],
  },
  {
    on: "subject",
    match: /\bcheap pills\b/i,
    reply: ["554", "5.7.1", "message refused: subject matches our content policy"],
  },
  { on: "sender", match: /^<>$/, reply: ["451", "4.7.1", "bounces are not accepted right now, try again later"] },
];

/**
 * A header value as a mail reader shows it: unfolded, encoded words decoded
 * (left as they are when they cannot be), NFKC-normalized, format
 * characters (`\p{Cf}`: zero-width spaces, direction marks) removed, white
 * space runs as one space.
 */
function shown(value: string): string {
  const unfolded = value.replace(/\r?\n(?=[ \t])/g, "");
  let decoded = unfolded;
  try {
    decoded = libmime.decodeWords(unfolded);
  } catch {
    // a malformed encoded word stays as written
  }
  return decoded.normalize("NFKC").replace(/\p{Cf}/gu, "").replace(/\s+/g, " ").trim();
}

/** The first of `rules` matching `value`, answered with its reply; Continue when none does. */
function check(rules: readonly Rule[], ctx: Milter.Ctx, on: Rule["on"], value: string): Milter.Stat {
  const rule = rules.find((r) => r.on === on && r.match.test(value));
  if (!rule) return Milter.Stat.Continue;
  const [code, xcode, text] = rule.reply;
  Milter.setreply(ctx, code, xcode, text.replace("%s", value.replaceAll("%", "%%")));
  return code.startsWith("4") ? Milter.Stat.Tempfail : Milter.Stat.Reject;
}

/**
 * The rules of the JSON file at `path`, checked.
 *
 * @throws {Error} saying what is wrong with the file.
 */
function readRules(path: string): Rule[] {
  const data: unknown = JSON.parse(readFileSync(path, "utf8"));
  if (!Array.isArray(data)) throw new Error(`${path}: expected an array of rules`);
  return data.map((item, i) => {
    const { on, match, flags, reply } = item ?? {};
    if (on !== "helo" && on !== "sender" && on !== "subject") {
      throw new Error(`${path}: rule ${i}: "on" must be helo, sender or subject`);
    }
    const valid = Array.isArray(reply) && reply.length === 3 && reply.every((part) => typeof part === "string") &&
      /^[45]\d\d$/.test(reply[0]);
    if (!valid) throw new Error(`${path}: rule ${i}: "reply" must be [4xx or 5xx code, status code, text]`);
    return { on, match: new RegExp(match, flags ?? ""), reply: reply as Rule["reply"] };
  });
}

/** The filter that applies `rules`. */
function filterFor(rules: readonly Rule[]): Milter.Filter {
  return {
    ...Milter.empty,
    name: "rules",
    helo: (ctx, helo) => check(rules, ctx, "helo", helo),
    envfrom: (ctx, sender) => check(rules, ctx, "sender", sender),
    header: (ctx, name, value) =>
      name.toLowerCase() === "subject" ? check(rules, ctx, "subject", shown(value)) : Milter.Stat.Continue,
  };
}

const file = process.env.MILTER_RULES;
/** The filter of the rules now: the file's when there is one, else the built-in ones. */
const load = (): Milter.Filter => filterFor(file ? readRules(file) : BUILT_IN);

let first: Milter.Filter;
try {
  first = load();
} catch (error) {
  fail(`MILTER_RULES: ${(error as Error).message}`); // exit code 78, before it listens
}
Milter.register(first);
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main({
  reload: file ? load : undefined,
  log: process.env.MILTER_LOG === "text" ? "text" : undefined,
  metrics: process.env.MILTER_METRICS || undefined,
});
