/**
 * DNS blocklist at connect: the client's IPv4 address is looked up in a DNSBL
 * zone (`zen.spamhaus.org` by default), and a listed client is refused with
 * 554. The `connect` callback awaits the DNS answer: only this connection
 * waits for it, every other one goes on.
 *
 *   npx tsx examples/dnsbl.ts          (or: bun examples/dnsbl.ts)
 *   deno run --allow-ffi --allow-env --allow-net --allow-sys=networkInterfaces examples/dnsbl.ts
 *   DNSBL_ZONE=bl.example.net DNSBL_SERVER=127.0.0.1:5353 npx tsx examples/dnsbl.ts
 *
 * DNSBL_SERVER: resolvers to ask, comma-separated `ip` or `ip:port` (default:
 * the system's; Spamhaus refuses queries from public resolvers, so use your
 * own). DNSBL_TIMEOUT: milliseconds for one lookup, retry included (default
 * 3000, at most 7000: below the callback timeout; anything but a whole number
 * stops the filter at start, exit code 78). Deno needs `--allow-sys=networkInterfaces` for DNSBL_SERVER, and
 * reports SERVFAIL as NXDOMAIN (ENOTFOUND): there a failing list reads as
 * "not listed". MILTER_SOCKET sets the socket (default inet:8890@127.0.0.1).
 * Postfix, in main.cf:
 *
 *   smtpd_milters = inet:127.0.0.1:8890
 *   milter_default_action = tempfail
 */

import dns from "node:dns";
import process from "node:process";
import * as Milter from "../mod.ts";
import { positiveInteger } from "./settings.ts";

const ZONE = process.env.DNSBL_ZONE ?? "zen.spamhaus.org";
const SERVERS = (process.env.DNSBL_SERVER ?? "").split(",").map((s) => s.trim()).filter(Boolean);
const CALLBACK_TIMEOUT = 8; // seconds
/** The bound of one lookup: below main's callbackTimeout, so that the filter answers, not the deadline. */
const LOOKUP_TIMEOUT = positiveInteger("DNSBL_TIMEOUT", 3000, CALLBACK_TIMEOUT * 1000 - 1000);

/** Whether `ip` (dotted quad) is listed in ZONE. Throws when the list cannot be asked. */
async function listed(ip: string): Promise<boolean> {
  // One resolver per lookup, so that cancel() ends this query only. Its
  // timeout and tries pace the retry; runtimes back off differently, so a
  // timer bounds the whole.
  const resolver = new dns.promises.Resolver({ timeout: Math.floor(LOOKUP_TIMEOUT / 3), tries: 2 });
  if (SERVERS.length) resolver.setServers(SERVERS);
  const timer = setTimeout(() => resolver.cancel(), LOOKUP_TIMEOUT);
  try {
    const answers = await resolver.resolve4(`${ip.split(".").reverse().join(".")}.${ZONE}`);
    // Spamhaus answers 127.255.255.x for a refused query (a public resolver, a bad zone): an error, not a listing.
    const refusal = answers.find((a) => a.startsWith("127.255.255."));
    if (refusal) throw new Error(`${ZONE} refused the query (${refusal})`);
    return true; // any other A record (127.0.0.x) is a listing
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === "ENOTFOUND" || code === "ENODATA") return false; // NXDOMAIN or no A record: not listed
    throw error; // ETIMEOUT, ECANCELLED (our timer), ESERVFAIL, ECONNREFUSED, a refusal
  } finally {
    clearTimeout(timer);
  }
}

Milter.register({
  ...Milter.empty,
  name: "dnsbl",
  connect: async (ctx, _host, addr) => {
    if (addr?.family !== "inet") return Milter.Stat.Continue; // IPv6, a unix socket, or no address
    const ip = addr.address;
    try {
      if (!(await listed(ip))) return Milter.Stat.Continue;
    } catch (error) {
      // Fail closed: a list that cannot be asked must not let the client in
      // unchecked. A 4xx makes a real sender retry later; spam rarely does.
      console.error(`dnsbl: ${ip}: ${error}`);
      Milter.setreply(ctx, "451", "4.4.3", `cannot check ${ip} against ${ZONE} now; try again later`);
      return Milter.Stat.Tempfail;
    }
    Milter.setreply(ctx, "554", "5.7.1", `${ip} is listed in ${ZONE}`);
    return Milter.Stat.Reject;
  },
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main({ callbackTimeout: CALLBACK_TIMEOUT });
