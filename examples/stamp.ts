/**
 * Header stamp: adds `X-Filtered-By` with the host the message came from, to
 * every message. The smallest useful filter: two callbacks, so the MTA skips
 * every other stage.
 *
 *   npx tsx examples/stamp.ts          (or: bun examples/stamp.ts)
 *   deno run --allow-ffi --allow-env --allow-net examples/stamp.ts
 *
 * MILTER_SOCKET sets the socket (default inet:8890@127.0.0.1). Postfix, in
 * main.cf:
 *
 *   smtpd_milters = inet:127.0.0.1:8890
 *   non_smtpd_milters = $smtpd_milters
 *   milter_default_action = tempfail
 */

import process from "node:process";
import * as Milter from "../mod.ts";

Milter.register({
  ...Milter.empty,
  name: "stamp",
  flags: [Milter.Flag.ADDHDRS],
  connect: (ctx, host, addr) => {
    const where = addr && "address" in addr ? ` [${addr.address}]` : "";
    Milter.setpriv(ctx, `${host ?? "unknown"}${where}`);
    return Milter.Stat.Continue;
  },
  eom: (ctx) => {
    Milter.addheader(ctx, "X-Filtered-By", `stamp; from ${Milter.getpriv<string>(ctx)}`);
    return Milter.Stat.Continue;
  },
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main();
