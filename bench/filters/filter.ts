/**
 * The benchmark filter with this project (see `bench-filter.ts`). The same
 * file runs under Node, Deno and Bun. `async`: every callback is async.
 * `rcpt-wait=<ms>`: envrcpt first awaits a timer of that many milliseconds.
 * `noreply`: the filter negotiates NR_HDR and NR_BODY, and header and body
 * answer No_reply. `readme`: the README's quick-start filter instead
 * (envrcpt and eom only; combines with no other option). The environment
 * variable `PIPELINE_BYTES`, when set, is passed to `main` as `pipelineBytes`
 * (the bound on a connection's queued no-reply callbacks; 0 turns pipelining
 * off); unset, main's default applies. `MILTER_LOG=json` (or `text`) turns on
 * one log line per message on stderr (`main({ log })`).
 *
 *   [PIPELINE_BYTES=<n>] [MILTER_LOG=json] <runtime> bench/filters/filter.ts <unix:/path | inet:port@host>
 *     [async] [rcpt-wait=<ms>] [noreply] [readme]
 */

import process from "node:process";
import * as Milter from "../../mod.ts";
import { asyncBenchFilter, benchFilter, noReplyBenchFilter, readmeFilter, withRcptWait } from "./bench-filter.ts";

const [spec, ...options] = process.argv.slice(2);
let async = false, rcptWait = 0, noReply = false, readme = false;
for (const option of options) {
  const wait = /^rcpt-wait=(\d+)$/.exec(option);
  if (option === "async") async = true;
  else if (option === "noreply") noReply = true;
  else if (option === "readme") readme = true;
  else if (wait) rcptWait = Number(wait[1]);
  else throw new Error(`filter.ts: unknown option ${option}`);
}
if (async && noReply) throw new Error("filter.ts: async and noreply do not combine");
if (readme && options.length > 1) throw new Error("filter.ts: readme combines with no other option");
const filter = readme ? readmeFilter : async ? asyncBenchFilter : noReply ? noReplyBenchFilter : benchFilter;
Milter.register(rcptWait > 0 ? withRcptWait(filter, rcptWait) : filter);
Milter.setconn(spec);
Milter.setbacklog(1024);
Milter.opensocket(true);
const pipelineBytes = process.env.PIPELINE_BYTES;
const log = process.env.MILTER_LOG;
await Milter.main({
  drainTimeout: 1,
  ...(pipelineBytes === undefined ? {} : { pipelineBytes: Number(pipelineBytes) }),
  ...(log === "json" || log === "text" ? { log } : {}),
});
