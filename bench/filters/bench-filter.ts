/**
 * The benchmark filter, as data: every callback defined and answering
 * Continue, one header added at end of message. `filter.ts` runs it;
 * `bench/profile.ts` times its trampolines.
 *
 * {@linkcode asyncBenchFilter} is the same filter with every callback async:
 * each awaits once before it answers, and eom adds its header after the
 * await. {@linkcode withRcptWait} makes envrcpt wait on a timer first, as a
 * filter waiting for I/O (a DNS or policy lookup) does.
 * {@linkcode noReplyBenchFilter} negotiates no reply to headers and body
 * chunks (NR_HDR, NR_BODY), which both answer No_reply.
 * {@linkcode readmeFilter} is the README's quick-start filter, as the README
 * shows it.
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

/** The no-reply steps {@linkcode noReplyBenchFilter} asks for. */
const NO_REPLY_STEPS: Milter.Step[] = [Milter.Step.NR_HDR, Milter.Step.NR_BODY];

/**
 * {@linkcode benchFilter} with no reply to headers and body chunks: negotiate
 * asks for the action it needs and NR_HDR and NR_BODY (the MTA must offer
 * them, as Postfix and the load generator do), and header and body answer
 * No_reply. The MTA then sends them without waiting for an answer.
 */
export const noReplyBenchFilter: Milter.Filter = {
  ...benchFilter,
  name: "bench-ts-noreply",
  negotiate: (): [Milter.Stat, Milter.Flag[], Milter.Step[]] => [
    Milter.Stat.Continue,
    [Milter.Flag.ADDHDRS],
    NO_REPLY_STEPS,
  ],
  header: (): Milter.Stat => Milter.Stat.No_reply,
  body: (): Milter.Stat => Milter.Stat.No_reply,
};

/** An await that settles at once: a cached lookup, say. */
const settled = (): Promise<void> => Promise.resolve();

const proceedLater = async (): Promise<Milter.Stat> => {
  await settled();
  return Milter.Stat.Continue;
};

/** {@linkcode benchFilter} with every callback async. */
export const asyncBenchFilter: Milter.Filter = {
  ...Milter.empty,
  name: "bench-ts-async",
  flags: [Milter.Flag.ADDHDRS],
  connect: proceedLater,
  helo: proceedLater,
  envfrom: proceedLater,
  envrcpt: proceedLater,
  data: proceedLater,
  header: proceedLater,
  eoh: proceedLater,
  body: proceedLater,
  eom: async (ctx) => {
    await settled();
    Milter.addheader(ctx, "X-Bench", "yes");
    return Milter.Stat.Continue;
  },
  abort: proceedLater,
  close: proceedLater,
  unknown: proceedLater,
};

/** `filter` whose envrcpt first awaits a timer of `ms` milliseconds (I/O stand-in). */
export function withRcptWait(filter: Milter.Filter, ms: number): Milter.Filter {
  const envrcpt = filter.envrcpt!;
  return {
    ...filter,
    envrcpt: async (ctx, ...args) => {
      await new Promise((resolve) => setTimeout(resolve, ms));
      return await envrcpt(ctx, ...args);
    },
  };
}

/**
 * The README's quick-start filter, copied from its "Quick start" section:
 * envrcpt rejects a recipient containing "spam" with 550 5.7.1, eom adds one
 * header; no other callback (`bench/run.ts --readme`).
 */
export const readmeFilter: Milter.Filter = {
  ...Milter.empty,
  name: "stamp",
  flags: [Milter.Flag.ADDHDRS],
  envrcpt: (ctx, rcpt) => {
    if (rcpt.includes("spam")) {
      Milter.setreply(ctx, "550", "5.7.1", "no such user here");
      return Milter.Stat.Reject;
    }
    return Milter.Stat.Continue;
  },
  eom: (ctx) => {
    Milter.addheader(ctx, "X-Stamped", `yes, queue id ${Milter.getsymval(ctx, "i")}`);
    return Milter.Stat.Continue;
  },
};
