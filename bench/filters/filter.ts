/**
 * The benchmark filter with this project (see `bench-filter.ts`). The same
 * file runs under Node, Deno and Bun. `async`: every callback is async.
 * `rcpt-wait=<ms>`: envrcpt first awaits a timer of that many milliseconds.
 *
 *   <runtime> bench/filters/filter.ts <unix:/path | inet:port@host> [async] [rcpt-wait=<ms>]
 */

import process from "node:process";
import * as Milter from "../../mod.ts";
import { asyncBenchFilter, benchFilter, withRcptWait } from "./bench-filter.ts";

const [spec, ...options] = process.argv.slice(2);
let async = false, rcptWait = 0;
for (const option of options) {
  const wait = /^rcpt-wait=(\d+)$/.exec(option);
  if (option === "async") async = true;
  else if (wait) rcptWait = Number(wait[1]);
  else throw new Error(`filter.ts: unknown option ${option}`);
}
const filter = async ? asyncBenchFilter : benchFilter;
Milter.register(rcptWait > 0 ? withRcptWait(filter, rcptWait) : filter);
Milter.setconn(spec);
Milter.setbacklog(1024);
Milter.opensocket(true);
await Milter.main({ drainTimeout: 1 });
