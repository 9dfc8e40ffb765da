/**
 * The benchmark filter with this project (see `bench-filter.ts`). The same
 * file runs under Node, Deno and Bun. `async`: every callback is async.
 * `rcpt-wait=<ms>`: envrcpt first awaits a timer of that many milliseconds.
 * `noreply`: the filter negotiates NR_HDR and NR_BODY, and header and body
 * answer No_reply. The environment variable `PIPELINE_BYTES`, when set, is
 * passed to `main` as `pipelineBytes` (the bound on a connection's queued
 * no-reply callbacks; 0 turns pipelining off); unset, main's default applies.
 *
 *   [PIPELINE_BYTES=<n>] <runtime> bench/filters/filter.ts <unix:/path | inet:port@host>
 *     [async] [rcpt-wait=<ms>] [noreply]
 */

import process from "node:process";
import * as Milter from "../../mod.ts";
import { asyncBenchFilter, benchFilter, noReplyBenchFilter, withRcptWait } from "./bench-filter.ts";

const [spec, ...options] = process.argv.slice(2);
let async = false, rcptWait = 0, noReply = false;
for (const option of options) {
  const wait = /^rcpt-wait=(\d+)$/.exec(option);
  if (option === "async") async = true;
  else if (option === "noreply") noReply = true;
  else if (wait) rcptWait = Number(wait[1]);
  else throw new Error(`filter.ts: unknown option ${option}`);
}
if (async && noReply) throw new Error("filter.ts: async and noreply do not combine");
const filter = async ? asyncBenchFilter : noReply ? noReplyBenchFilter : benchFilter;
Milter.register(rcptWait > 0 ? withRcptWait(filter, rcptWait) : filter);
Milter.setconn(spec);
Milter.setbacklog(1024);
Milter.opensocket(true);
const pipelineBytes = process.env.PIPELINE_BYTES;
await Milter.main({
  drainTimeout: 1,
  ...(pipelineBytes === undefined ? {} : { pipelineBytes: Number(pipelineBytes) }),
});
