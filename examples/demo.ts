/**
 * The demo: a small filter on a local socket, and the test client pushing
 * one sample message through it, in one process. No MTA needed.
 *
 *   npx tsx examples/demo.ts
 *   deno run --allow-ffi --allow-env --allow-net examples/demo.ts
 *   bun examples/demo.ts
 *
 * Set MILTER_SOCKET to use another socket (default inet:8890@127.0.0.1).
 */

import process from "node:process";
import * as Milter from "../mod.ts";
import { MilterClient } from "../src/testing/mod.ts";

const socket = process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1";

Milter.register({
  ...Milter.empty,
  name: "demo",
  flags: [Milter.Flag.ADDHDRS],
  connect: (ctx, host, addr) => {
    Milter.setpriv(ctx, { host, addr, rcpts: 0 });
    return Milter.Stat.Continue;
  },
  envrcpt: (ctx, rcpt) => {
    const state = Milter.getpriv<{ rcpts: number }>(ctx)!;
    state.rcpts++;
    if (rcpt.toLowerCase().includes("spam")) {
      Milter.setreply(ctx, "550", "5.7.1", `no mail for ${rcpt}`);
      return Milter.Stat.Reject;
    }
    return Milter.Stat.Continue;
  },
  eom: (ctx) => {
    const state = Milter.getpriv<{ host: string | null; rcpts: number }>(ctx)!;
    Milter.addheader(ctx, "X-Demo", `checked by ${Milter.version().join(".")} for ${state.host} (${state.rcpts} rcpt)`);
    return Milter.Stat.Continue;
  },
});
Milter.setconn(socket);
Milter.opensocket(true);
const running = Milter.main();
console.log(`demo filter listening on ${socket}`);

const client = await MilterClient.open(socket);
console.log(
  "connect:",
  (await client.connect("client.example", { family: "inet", address: "192.0.2.7", port: 4711 })).action,
);
console.log("helo:   ", (await client.helo("client.example")).action);
const result = await client.message({
  from: "<alice@example.org>",
  rcpt: ["<bob@example.net>", "<spam@example.net>"],
  headers: [["From", "Alice <alice@example.org>"], ["Subject", "Hello"]],
  body: "Hello Bob!\r\n",
});
for (const { stage, reply } of result.replies) {
  console.log(`${stage.padEnd(8)} ${reply.action}${reply.text ? ` ${reply.text}` : ""}`);
}
for (const m of result.modifications) console.log("modification:", JSON.stringify(m));
client.quit();

Milter.stop();
await running;
console.log("demo filter stopped");
