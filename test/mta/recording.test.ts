/**
 * Postfix → `milter-test proxy` → filter: Postfix delivers through the proxy
 * what it delivers without it; the sessions it recorded replay against the
 * same filter with the same answers, and against a filter changed in one
 * action report exactly that action.
 */

import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, test } from "vitest";
import { loadRecordings, replay, startProxy } from "../../src/testing/mod.ts";
import { freePort, killAll, startFilter } from "../helpers/filter.ts";
import { type Delivered, postfixMilterSpec, PrivatePostfix, stopAllPostfix } from "./postfix.ts";
import { send } from "./smtp.ts";

afterAll(async () => {
  await stopAllPostfix();
  await killAll();
});

function rulesFile(tag: string): string {
  const path = join(mkdtempSync(join(tmpdir(), "milter-rules-")), "rules.json");
  writeFileSync(path, JSON.stringify({ tag, reject: "spam" }));
  return path;
}

const header = (d: Delivered, name: string): string[] => d.headers.filter(([n]) => n === name).map(([, v]) => v);

/** Two messages through `postfix`: one to two recipients, one with a refused recipient; what was delivered. */
async function traffic(postfix: PrivatePostfix, tag: string): Promise<{ rcpt: number[][]; delivered: string[][] }> {
  const rcpt: number[][] = [];
  for (const [i, to] of [["bob@example.net", "carol@example.net"], ["spam@example.net", "dave@example.net"]].entries()) {
    const tx = await send(postfix.smtpPort, {
      from: "alice@example.org",
      to,
      content: `Subject: ${tag} ${i}\r\nFrom: alice@example.org\r\n\r\nHello.\r\n`,
    });
    rcpt.push(tx.rcpt.map((r) => r.code));
    expect(tx.end?.code).toBe(250);
  }
  const delivered = await Promise.all([0, 1].map(async (i) => {
    const d = await postfix.waitForDelivery((d) => d.headers.some(([n, v]) => n === "Subject" && v === `${tag} ${i}`));
    return header(d, "X-Rules");
  }));
  return { rcpt, delivered };
}

test("Postfix delivers through the proxy what it delivers without it; its sessions replay as recorded", async () => {
  const filter = await startFilter({ socket: "inet", fixture: "operations.ts", env: { RULES: rulesFile("A") } });
  const direct = await PrivatePostfix.start(postfixMilterSpec(filter.spec));
  const without = await traffic(direct, "direct");
  await direct.stop();

  const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
  const listen = `inet:${await freePort()}@127.0.0.1`;
  const proxy = await startProxy({ listen, to: filter.spec, record: dir });
  const proxied = await PrivatePostfix.start(postfixMilterSpec(listen));
  const through = await traffic(proxied, "proxied");
  expect(through).toEqual(without);
  expect(through).toEqual({ rcpt: [[250, 250], [550, 250]], delivered: [["A/A"], ["A/A"]] });
  await proxied.stop();
  await proxy.close();

  // Every session Postfix opened was recorded, its start-up probe among them.
  const recordings = loadRecordings(dir);
  expect(recordings.length).toBe(readdirSync(dir).length);
  const withMessages = recordings.filter(({ recording }) => recording.frames.some((f) => f.name === "eom"));
  expect(withMessages).toHaveLength(2);
  for (const { recording } of recordings) {
    expect((await replay(recording, filter.spec)).differences).toEqual([]);
  }
  const changed = await startFilter({ socket: "inet", fixture: "operations.ts", env: { RULES: rulesFile("B") } });
  for (const { recording } of withMessages) {
    const { differences } = await replay(recording, changed.spec);
    expect(differences.map((d) => [d.command, d.recorded, d.replayed])).toEqual([[
      "eom",
      ['addheader {"type":"addheader","name":"X-Rules","value":"A/A"}', "continue"],
      ['addheader {"type":"addheader","name":"X-Rules","value":"B/B"}', "continue"],
    ]]);
  }
});
