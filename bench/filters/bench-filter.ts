/**
 * The benchmark filter, as data: every callback defined and answering
 * Continue, one header added at end of message. `filter.ts` runs it;
 * `bench/profile.ts` times its trampolines.
 */

import * as Milter from "../../mod.ts";

const proceed = (): Milter.Stat => Milter.Stat.Continue;

export const benchFilter: Milter.Filter = {
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
};
