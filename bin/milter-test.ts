#!/usr/bin/env node
/**
 * `milter-test`: push a message through any milter as an MTA would. See
 * `milter-test --help`, and `src/testing/cli.ts`.
 *
 *   milter-test unix:/run/milter/filter.sock message.eml
 *   deno run --allow-net --allow-read --allow-write bin/milter-test.ts unix:/run/milter/filter.sock message.eml
 *   (--allow-write only for a unix socket: Deno asks for it to connect to one)
 *
 * @module
 */

import process from "node:process";
import { main } from "../src/testing/cli.ts";

process.exitCode = await main(process.argv.slice(2));
