/**
 * Optional libmilter functions: a build without smfi_insheader and
 * smfi_setmlreply (compiled here from test/fixtures/partial-libmilter.c,
 * which forwards everything else to the system's libmilter) still loads and
 * filters mail; calling a missing function is a MilterError that names it.
 */

import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, test } from "vitest";
import { type FilterProcess, killAll, script, startFilter } from "./helpers/filter.ts";
import { ROOT } from "./helpers/runtimes.ts";

afterAll(killAll);

let filter: FilterProcess;
beforeAll(async () => {
  const library = join(mkdtempSync(join(tmpdir(), "milter-partial-")), "libmilter-partial.so");
  execFileSync("cc", [
    "-shared",
    "-fPIC",
    "-O1",
    '-DREAL_LIBMILTER="libmilter.so.1.0.1"',
    "-o",
    library,
    join(ROOT, "test/fixtures/partial-libmilter.c"),
  ]);
  const symbols = execFileSync("nm", ["-D", "--defined-only", library], { encoding: "utf8" });
  expect(symbols).toContain("smfi_addheader");
  expect(symbols).not.toContain("smfi_insheader");
  filter = await startFilter({ env: { FLAGS: "ADDHDRS", LIBMILTER_PATH: library } });
});

test("mail flows; insheader and setmlreply name what this libmilter lacks", async () => {
  const client = await filter.client();
  await client.connect("partial.example", null);
  const result = await client.message({
    from: "<a@example.org>",
    rcpt: ["<b@example.net>"],
    headers: [["Subject", "hi"]],
    body: "x\r\n",
  }, {
    envfrom: script({
      eom: {
        actions: [["addheader", "X-Added", "yes"], ["insheader", 0, "X-Inserted", "no"]],
        mlreply: ["550", "5.7.1", ["one", "two"]],
      },
    }),
  });
  client.quit();
  expect(result.reply).toEqual({ action: "continue" });
  expect(result.modifications).toEqual([{ type: "addheader", name: "X-Added", value: "yes" }]);
  const ctx = await filter.ctxOf("partial.example");
  const eom = await filter.waitFor((e) => e.cb === "eom" && e.ctx === ctx);
  expect(eom.actions[1]).toMatchObject({ ok: false, name: "MilterError", errorFn: "Milter.insheader" });
  expect(eom.actions[1].message).toMatch(
    /^Milter\.insheader: .*libmilter-partial\.so has no smfi_insheader \(an older or trimmed libmilter build\)/,
  );
  expect(eom.mlreply).toMatchObject({ ok: false, errorFn: "Milter.setmlreply" });
  expect(eom.mlreply.message).toContain("has no smfi_setmlreply");
});
