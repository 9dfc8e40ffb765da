/**
 * Bytes that are not UTF-8 (Latin-1 header values, 8-bit addresses): no
 * exception anywhere, the message passes unchanged, the callbacks see U+FFFD
 * for invalid sequences, and rawargs gives the exact bytes.
 */

import { afterAll, beforeAll, expect, test } from "vitest";
import { type FilterProcess, killAll, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);
let filter: FilterProcess;
beforeAll(async () => {
  filter = await startFilter({ env: { FLAGS: "ADDHDRS" } });
});

const latin1 = (text: string): Uint8Array => Uint8Array.from(text, (c) => c.charCodeAt(0));

test("8-bit header values and addresses: strings with U+FFFD, exact bytes from rawargs, mail unchanged", async () => {
  const client = await filter.client();
  await client.connect(
    "latin1.example",
    null,
    script({
      envfrom: { actions: [["rawargs"]] },
      header: { actions: [["rawargs"]] },
      connect: { actions: [["rawargs"]] },
      eoh: { actions: [["rawargs"]] },
    }),
  );
  expect((await client.envfrom(latin1("<josé@example.org>"), ["SIZE=10"])).action).toBe("continue");
  await client.envrcpt("<b@example.net>");
  await client.data();
  expect((await client.header("Subject", latin1("Café à la crème"))).action).toBe("continue");
  await client.eoh();
  await client.body("body\r\n");
  const result = await client.eom();
  client.quit();
  expect(result.reply.action).toBe("continue");
  expect(result.modifications).toEqual([]);

  const ctx = await filter.ctxOf("latin1.example");
  await filter.waitFor((e) => e.cb === "close" && e.ctx === ctx);
  const events = filter.eventsOf(ctx);
  const envfrom = events.find((e) => e.cb === "envfrom")!, header = events.find((e) => e.cb === "header")!;
  expect(envfrom.args).toEqual(["<jos\uFFFD@example.org>", ["SIZE=10"]]);
  expect(envfrom.actions[0].result).toEqual([{ bytes: Array.from(latin1("<josé@example.org>")) }, {
    bytes: Array.from(latin1("SIZE=10")),
  }]);
  expect(header.args).toEqual(["Subject", "Caf\uFFFD \uFFFD la cr\uFFFDme"]);
  expect(header.actions[0].result).toEqual([{ bytes: Array.from(latin1("Subject")) }, {
    bytes: Array.from(latin1("Café à la crème")),
  }]);
  expect(events.find((e) => e.cb === "connect")!.actions[0].result).toEqual([{
    bytes: Array.from(latin1("latin1.example")),
  }]);
  expect(events.find((e) => e.cb === "eoh")!.actions[0].result).toEqual([]);
  expect(filter.events.filter((e) => e.event === "reported")).toEqual([]);
});

test("rawargs is refused outside the callback, like every context function", async () => {
  const client = await filter.client();
  await client.connect("raw-later.example", null, script({ helo: { later: [["rawargs"]] } }));
  await client.helo("x");
  const ctx = await filter.ctxOf("raw-later.example");
  const later = await filter.waitFor((e) => e.event === "later" && e.ctx === ctx);
  // The timer was set by helo: its use belongs to that call, which is over.
  expect(later.result.message).toMatch(
    /^Milter\.rawargs: Milter\.Ctx#\d+ is used by code its helo callback left running/,
  );
  client.quit();
});
