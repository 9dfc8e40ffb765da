/**
 * Collect, then decide: reads every header and the size of the body, and
 * decides only at end of message. It negotiates no reply to the headers and
 * the body (NR_HDR, NR_BODY) when the MTA offers them, so the binding
 * pipelines those stages: libmilter is answered at once for each header and
 * body chunk, the callbacks run as the JS thread gets to them, and end of
 * message waits until they all have. Stand-in for a content scanner: a
 * message whose Subject shouts about free money is rejected; the others get
 * `X-Collected: <n> headers, <bytes> body bytes`.
 *
 *   npx tsx examples/collect.ts          (or: bun examples/collect.ts)
 *   deno run --allow-ffi --allow-env --allow-net examples/collect.ts
 *
 * MILTER_SOCKET sets the socket (default inet:8890@127.0.0.1). Postfix, in
 * main.cf (it offers the no-reply steps; so does Sendmail 8.14 and later):
 *
 *   smtpd_milters = inet:127.0.0.1:8890
 *   non_smtpd_milters = $smtpd_milters
 *   milter_default_action = tempfail
 */

import process from "node:process";
import * as Milter from "../mod.ts";

interface Collected {
  headers: [string, string][];
  bytes: number;
}

/** The verdict on what was collected: where a call to a scanner (over HTTP, say) would go. */
async function classify(seen: Collected): Promise<"spam" | "ham"> {
  await Promise.resolve();
  const subject = seen.headers.find(([name]) => name.toLowerCase() === "subject")?.[1] ?? "";
  return /free money/i.test(subject) ? "spam" : "ham";
}

Milter.register({
  ...Milter.empty,
  name: "collect",
  flags: [Milter.Flag.ADDHDRS],
  // Only the steps the MTA offers: libmilter drops a connection whose MTA lacks one asked for.
  negotiate: (_ctx, _flags, steps) => [
    Milter.Stat.Continue,
    [Milter.Flag.ADDHDRS],
    steps.filter((step) => step === Milter.Step.NR_HDR || step === Milter.Step.NR_BODY),
  ],
  envfrom: (ctx) => {
    Milter.setpriv<Collected>(ctx, { headers: [], bytes: 0 });
    return Milter.Stat.Continue;
  },
  // Continue sends nothing at a no-reply stage, and is right where the MTA wants a reply.
  header: (ctx, name, value) => {
    Milter.getpriv<Collected>(ctx)!.headers.push([name, value]);
    return Milter.Stat.Continue;
  },
  body: (ctx, _chunk, length) => {
    Milter.getpriv<Collected>(ctx)!.bytes += length;
    return Milter.Stat.Continue;
  },
  eom: async (ctx) => {
    const seen = Milter.getpriv<Collected>(ctx)!;
    if (await classify(seen) === "spam") {
      Milter.setreply(ctx, "554", "5.7.1", "message refused as spam");
      return Milter.Stat.Reject;
    }
    Milter.addheader(ctx, "X-Collected", `${seen.headers.length} headers, ${seen.bytes} body bytes`);
    return Milter.Stat.Continue;
  },
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main();
