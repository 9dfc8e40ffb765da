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
 */

import libmime from "libmime";
import process from "node:process";
import * as Milter from "../mod.ts";

interface Rule {
  /** What the rule looks at. */
  on: "helo" | "sender" | "subject";
  match: RegExp;
  /** The SMTP reply: code, enhanced status code, text (`%` written as `%%`). */
  reply: [string, string, string];
}

const RULES: Rule[] = [
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

/** The first rule matching `value`, answered with its reply; Continue when none does. */
function check(ctx: Milter.Ctx, on: Rule["on"], value: string): Milter.Stat {
  const rule = RULES.find((r) => r.on === on && r.match.test(value));
  if (!rule) return Milter.Stat.Continue;
  const [code, xcode, text] = rule.reply;
  Milter.setreply(ctx, code, xcode, text.replace("%s", value.replaceAll("%", "%%")));
  return code.startsWith("4") ? Milter.Stat.Tempfail : Milter.Stat.Reject;
}

Milter.register({
  ...Milter.empty,
  name: "rules",
  helo: (ctx, helo) => check(ctx, "helo", helo),
  envfrom: (ctx, sender) => check(ctx, "sender", sender),
  header: (ctx, name, value) =>
    name.toLowerCase() === "subject" ? check(ctx, "subject", shown(value)) : Milter.Stat.Continue,
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main();
