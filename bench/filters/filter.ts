/**
 * The benchmark filter with this project (see `bench-filter.ts`). The same
 * file runs under Node, Deno and Bun.
 *
 *   <runtime> bench/filters/filter.ts <unix:/path | inet:port@host>
 */

import process from "node:process";
import * as Milter from "../../mod.ts";
import { benchFilter } from "./bench-filter.ts";

Milter.register(benchFilter);
Milter.setconn(process.argv[2]);
Milter.setbacklog(1024);
Milter.opensocket(true);
await Milter.main({ drainTimeout: 1 });
