/**
 * The benchmark filter with this project: every callback defined and
 * answering Continue, one header added at end of message. The same file runs
 * under Node, Deno and Bun.
 *
 *   <runtime> bench/filters/filter.ts <unix:/path | inet:port@host>
 */

import process from "node:process";
import * as Milter from "../../mod.ts";

const proceed = (): Milter.Stat => Milter.Stat.Continue;

Milter.register({
  ...Milter.empty,
  name: "bench-ts",
  flags: [Milter.Flag.ADDHDRS],
  connect: proceed,
  helo: proceed,
  envfrom: proceed,
  envrcpt: proceed,
  data: proceed,
  header: proceed,
  eoh: proceed,
  body: proceed,
  eom: (ctx) => {
    Milter.addheader(ctx, "X-Bench", "yes");
    return Milter.Stat.Continue;
  },
  abort: proceed,
  close: proceed,
  unknown: proceed,
});
Milter.setconn(process.argv[2]);
Milter.setbacklog(1024);
Milter.opensocket(true);
await Milter.main({ drainTimeout: 1 });
