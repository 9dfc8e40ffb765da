/**
 * Every public function fed arbitrary values from plain JS (no TypeScript to
 * stop it): each call either works or raises a MilterError naming the
 * function. No other exception, nothing wrong reaching C, no crash.
 */

import fc from "fast-check";
import { afterAll, expect, test } from "vitest";
import * as Milter from "../mod.ts";
import { killAll, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);

const CTX_FUNCTIONS = [
  "getsymval",
  "getpriv",
  "setpriv",
  "setreply",
  "setmlreply",
  "addheader",
  "chgheader",
  "insheader",
  "chgfrom",
  "addrcpt",
  "addrcpt_par",
  "delrcpt",
  "replacebody",
  "progress",
  "quarantine",
  "setsymlist",
  "rawargs",
];

/** Arbitrary JSON-able values, weighted toward the shapes that are nearly right. */
const value = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.string({ maxLength: 20 }),
  fc.integer({ min: -5, max: 2 ** 31 + 5 }),
  fc.constantFrom(null, "", "550", "5.7.1", "X-Header", -1, 0, 1, 0.5, 2 ** 31, "EOM", "CONNECT", true),
  fc.array(fc.string({ maxLength: 10 }), { maxLength: 40 }),
);

test("functions on a context: arbitrary arguments from plain JS", async () => {
  const filter = await startFilter({
    env: { FLAGS: "ADDHDRS,CHGHDRS,CHGBODY,ADDRCPT,ADDRCPT_PAR,DELRCPT,QUARANTINE,CHGFROM,SETSYMLIST" },
  });
  const calls = fc.sample(
    fc.tuple(fc.constantFrom(...CTX_FUNCTIONS), fc.array(value, { maxLength: 4 })),
    { numRuns: 600, seed: 20261124 },
  );
  let checked = 0, refused = 0;
  for (let batch = 0; batch < calls.length; batch += 50) {
    const actions = calls.slice(batch, batch + 50).map(([fn, args]) => [fn, ...args]);
    const client = await filter.client();
    const host = `fuzz${batch}.example`;
    await client.connect(host, null);
    const result = await client.message(
      { from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [["Subject", "fuzz"]], body: "x\r\n" },
      { envfrom: script({ eom: { actions } }) },
    );
    client.quit();
    // Whatever the calls did, the message got a valid answer.
    expect(["continue", "replycode", "reject", "tempfail"]).toContain(result.reply.action);
    const ctx = await filter.ctxOf(host);
    const eom = await filter.waitFor((e) => e.cb === "eom" && e.ctx === ctx);
    for (const outcome of eom.actions) {
      checked++;
      if (outcome.ok) continue;
      refused++;
      expect(outcome.name, JSON.stringify(outcome)).toBe("MilterError");
      expect(outcome.message).toMatch(new RegExp(`^Milter\\.${outcome.fn}: `));
    }
  }
  expect(checked).toBe(600);
  expect(refused).toBeGreaterThan(300); // most arbitrary arguments are wrong, and were refused
  expect(filter.events.filter((e) => e.event === "reported")).toEqual([]);
  expect(filter.child.exitCode).toBeNull();
});

test("process-level functions: arbitrary arguments from plain JS", () => {
  const m = Milter as unknown as Record<string, (...args: unknown[]) => unknown>;
  const names = [
    "setconn",
    "settimeout",
    "setbacklog",
    "setdbg",
    "setmaxdatasize",
    "opensocket",
    "setsocketmode",
    "settcpnodelay",
    "setErrorReporter",
    "register",
  ];
  fc.assert(
    fc.property(fc.constantFrom(...names), fc.array(fc.anything({ maxDepth: 2 }), { maxLength: 3 }), (fn, args) => {
      try {
        m[fn](...args);
      } catch (error) {
        expect(error, `${fn}(${args.map(String).join(", ")})`).toBeInstanceOf(Milter.MilterError);
        expect((error as Error).message.startsWith(`Milter.${fn}: `)).toBe(true);
      }
    }),
    { numRuns: 500, seed: 20261124 },
  );
  m.setErrorReporter(null);
});
