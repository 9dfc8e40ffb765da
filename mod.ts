/**
 * Complete TypeScript bindings to libmilter, the mail filter library of
 * Sendmail and Postfix, for Node, Deno and Bun. The API mirrors the OCaml
 * `milter` module one for one: the same functions, callbacks and variants.
 *
 * ```ts
 * import * as Milter from "@milterjs/milter";
 *
 * Milter.register({
 *   ...Milter.empty,
 *   name: "stamp",
 *   flags: [Milter.Flag.ADDHDRS],
 *   eom: (ctx) => {
 *     Milter.addheader(ctx, "X-Stamped", "yes");
 *     return Milter.Stat.Continue;
 *   },
 * });
 * Milter.setconn("inet:8890@127.0.0.1");
 * await Milter.main(); // until stop(), SIGINT, SIGTERM or SIGHUP
 * ```
 *
 * libmilter runs the protocol on its own threads; every callback runs on
 * the JS thread while libmilter's thread for that connection waits for its
 * answer: a `Stat` at once, or a Promise of one (an `async` callback awaiting
 * a DNS, database or HTTP lookup), which holds only its own connection.
 * Synchronous work in a callback delays every connection: await I/O, never
 * block on it. The system libmilter is loaded on first
 * use (`LIBMILTER_PATH` overrides the search). Under Deno, run with
 * `--allow-ffi --allow-env` (plus `--allow-read --allow-write` for unix sockets).
 *
 * @module
 */

export { MilterError } from "./src/error.ts";
export { Flag, Stage, Stat, Step } from "./src/variants.ts";
export type { SockAddr } from "./src/convert.ts";
export { Ctx } from "./src/ctx.ts";
export type { CallbackName } from "./src/stages.ts";
export { type Answer, empty, type Filter, register, replace, version_code } from "./src/filter.ts";
export {
  DEFAULT_PIPELINE_MACROS,
  main,
  type MainOptions,
  opensocket,
  setbacklog,
  setconn,
  setdbg,
  setmaxdatasize,
  setsocketmode,
  settcpnodelay,
  settimeout,
  stop,
  version,
} from "./src/main.ts";
export {
  addheader,
  addrcpt,
  addrcpt_par,
  chgfrom,
  chgheader,
  delrcpt,
  getpriv,
  getsymval,
  insheader,
  progress,
  quarantine,
  rawargs,
  replacebody,
  setmlreply,
  setpriv,
  setreply,
  setsymlist,
} from "./src/actions.ts";
export { type ErrorInfo, type ErrorReporter, setErrorReporter } from "./src/report.ts";
export { DURATION_BUCKETS, type FailureKind, type Histogram, type Stats, stats, type Verdict } from "./src/stats.ts";
export { metrics } from "./src/metrics.ts";
export type { LogEntry } from "./src/messages.ts";
