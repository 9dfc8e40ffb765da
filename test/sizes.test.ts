/**
 * Large inputs: 50 MB bodies in chunks, a 10 MB replacement body, 1,000
 * recipients, 64 KiB header values (with setmaxdatasize raised).
 */

import { afterAll, beforeAll, expect, test } from "vitest";
import { type FilterProcess, killAll, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);
let filter: FilterProcess;
beforeAll(async () => {
  filter = await startFilter({ env: { FLAGS: "CHGBODY,ADDHDRS", QUIET: "1", MAX_DATA_SIZE: String(1024 * 1024 - 1) } });
});

test("a 50 MB body arrives whole, in chunks", async () => {
  const client = await filter.client({ timeout: 60_000 });
  await client.connect("big-body.example", null);
  await client.envfrom("<a@example.org>");
  await client.envrcpt("<b@example.net>");
  await client.data();
  await client.eoh();
  const chunk = new TextEncoder().encode("0123456789abcdef".repeat(4096)); // 64 KiB
  const total = 50 * 1024 * 1024;
  for (let sent = 0; sent < total; sent += chunk.length) await client.body(chunk);
  expect((await client.eom()).reply.action).toBe("continue");
  client.quit();
  const ctx = await filter.ctxOf("big-body.example");
  expect((await filter.waitFor((e) => e.cb === "eom" && e.ctx === ctx)).bodyBytes).toBe(total);
});

test("replacebody with 10 MB", async () => {
  const client = await filter.client({ timeout: 60_000 });
  await client.connect("big-replace.example", null);
  const result = await client.message({
    from: "<a@example.org>",
    rcpt: ["<b@example.net>"],
    headers: [],
    body: "small\r\n",
  }, {
    envfrom: script({
      eom: { actions: [["replacebody", { repeat: "0123456789", times: 1024 * 1024, asBytes: true }]] },
    }),
  });
  client.quit();
  expect(result.body!.length).toBe(10 * 1024 * 1024);
  expect(new TextDecoder().decode(result.body!.subarray(0, 20))).toBe("01234567890123456789");
});

test("1,000 recipients, each seen with its arguments", async () => {
  const client = await filter.client();
  await client.connect("many-rcpt.example", null);
  await client.envfrom("<a@example.org>");
  for (let i = 0; i < 1000; i++) {
    expect((await client.envrcpt(`<r${i}@example.net>`, ["NOTIFY=NEVER"])).action).toBe("continue");
  }
  client.quit();
  const ctx = await filter.ctxOf("many-rcpt.example");
  await filter.waitFor((e) => e.cb === "close" && e.ctx === ctx);
  const rcpts = filter.eventsOf(ctx).filter((e) => e.cb === "envrcpt").map((e) => e.args);
  expect(rcpts).toHaveLength(1000);
  expect(rcpts[999]).toEqual(["<r999@example.net>", ["NOTIFY=NEVER"]]);
});

test("64 KiB header values reach the filter and can be added back", async () => {
  const value = "v".repeat(64 * 1024);
  const client = await filter.client();
  await client.connect("big-header.example", null);
  const result = await client.message({
    from: "<a@example.org>",
    rcpt: ["<b@example.net>"],
    headers: [["X-Big", value]],
    body: "x\r\n",
  }, {
    envfrom: script({ eom: { actions: [["addheader", "X-Big-Too", { repeat: "w", times: 64 * 1024 }]] } }),
  });
  client.quit();
  const ctx = await filter.ctxOf("big-header.example");
  const header = await filter.waitFor((e) => e.cb === "header" && e.ctx === ctx);
  expect(header.args).toEqual(["X-Big", value]);
  expect(result.modifications).toEqual([{ type: "addheader", name: "X-Big-Too", value: "w".repeat(64 * 1024) }]);
});
