/**
 * How many simultaneous milter connections a running filter holds (issue 20):
 * opens `connections` MTA-side connections at 2,000 a second (as a listen
 * backlog needs), each negotiated and past CONNECT and HELO, and only once
 * every one is open (or has failed) sends `messages` messages on each, all
 * connections at once. A message counts as answered when it is continued with
 * exactly one modification (the bench filters add one header). Prints one
 * JSON line: connections held, failed to open, messages answered, wrong or
 * failed, seconds to hold them all and in total, and the first error.
 *
 *   npx tsx bench/filters/filter.ts unix:/tmp/hold.sock readme &   # or any filter
 *   npx tsx bench/hold.ts unix:/tmp/hold.sock 10000 2
 *
 * Both processes need `ulimit -n` above the connection count (Node raises its
 * soft limit to the hard one). Every step has a 60 s timeout: nothing hangs.
 */

import process from "node:process";
import { MilterClient } from "../src/testing/mod.ts";

const [spec, connectionsArg, messagesArg = "2"] = process.argv.slice(2);
const connections = Number(connectionsArg);
const messages = Number(messagesArg);
if (!spec || !Number.isSafeInteger(connections) || connections < 1 || !Number.isSafeInteger(messages)) {
  process.stderr.write("usage: hold.ts <socket spec> <connections> [messages per connection, default 2]\n");
  process.exit(2);
}

const OPEN_PER_SECOND = 2000;
const started = performance.now();
const seconds = (): number => Math.round((performance.now() - started) / 100) / 10;
let firstError = "";
const note = (error: unknown): void => void (firstError ||= String(error));

const clients = await Promise.all(Array.from({ length: connections }, async (_, i) => {
  await new Promise((resolve) => setTimeout(resolve, (i / OPEN_PER_SECOND) * 1000));
  try {
    const client = await MilterClient.open(spec, { timeout: 60_000 });
    await client.connect(`host${i}.example`, null);
    return client;
  } catch (error) {
    note(error);
    return null;
  }
}));
const held = clients.filter((c) => c !== null).length;
const holdSeconds = seconds();

let answered = 0, wrong = 0, failed = 0;
await Promise.all(clients.map(async (client, i) => {
  if (client === null) return;
  try {
    for (let k = 0; k < messages; k++) {
      const result = await client.message({
        from: "<a@example.org>",
        rcpt: ["<b@example.net>"],
        headers: [["Subject", `${i}.${k}`]],
        body: "hello\r\n",
      });
      if (result.reply.action === "continue" && result.modifications.length === 1) answered++;
      else wrong++;
    }
  } catch (error) {
    failed++;
    note(error);
  } finally {
    client.quit();
  }
}));
process.stdout.write(
  `${
    JSON.stringify({
      connections,
      held,
      failedToOpen: connections - held,
      answered,
      wrong,
      failed,
      holdSeconds,
      totalSeconds: seconds(),
      firstError,
    })
  }\n`,
);
