/**
 * Postfix → `milter-test proxy` → filter, and Sendmail → proxy → filter: the
 * MTA delivers through the proxy what it delivers without it; the sessions
 * it recorded replay against the same filter with the same answers, and
 * against a filter changed in one action report exactly that action.
 */

import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { afterAll, describe, expect, test } from "vitest";
import { spawn } from "node:child_process";
import { loadRecordings, replay } from "../../src/testing/mod.ts";
import { freePort, killAll, startFilter } from "../helpers/filter.ts";
import { command, ROOT, type Runtime, RUNTIMES } from "../helpers/runtimes.ts";
import { postfixMilterSpec, PrivatePostfix, stopAllPostfix } from "./postfix.ts";
import { readmeBlock } from "./readme.ts";
import { PrivateSendmail, provisionSendmail, stopAllSendmail, withSocket } from "./sendmail.ts";
import { send } from "./smtp.ts";

afterAll(async () => {
  await stopAllPostfix();
  await stopAllSendmail();
  await killAll();
});

const provisioned = provisionSendmail();
if ("missing" in provisioned && process.env.CI === "true") {
  throw new Error(`${provisioned.missing} (CI=true: Sendmail is required)`);
}

/** An MTA with the filter at a socket spec: where to send SMTP, what it delivered, how to stop it. */
interface Mta {
  readonly smtpPort: number;
  waitForDelivery(predicate: (d: { headers: [string, string][] }) => boolean): Promise<{ headers: [string, string][] }>;
  stop(): Promise<void>;
}

const MTAS: Record<string, ((spec: string) => Promise<Mta>) | null> = {
  Postfix: (spec) => PrivatePostfix.start(postfixMilterSpec(spec)),
  // The README's INPUT_MAIL_FILTER line, with the socket changed.
  Sendmail: "tree" in provisioned
    ? (spec) => {
      const line = readmeBlock("Use with Sendmail", "").split("\n").find((l) => l.startsWith("INPUT_MAIL_FILTER("))!;
      return PrivateSendmail.start(provisioned.tree, withSocket(line, spec));
    }
    : null,
};

function rulesFile(tag: string): string {
  const path = join(mkdtempSync(join(tmpdir(), "milter-rules-")), "rules.json");
  writeFileSync(path, JSON.stringify({ tag, reject: "spam" }));
  return path;
}

const header = (d: { headers: [string, string][] }, name: string): string[] =>
  d.headers.filter(([n]) => n === name).map(([, v]) => v);

/** Two messages through `mta`: one to two recipients, one with a refused recipient; what was delivered. */
async function traffic(mta: Mta, tag: string): Promise<{ rcpt: number[][]; delivered: string[][] }> {
  const rcpt: number[][] = [];
  for (
    const [i, to] of [["bob@example.net", "carol@example.net"], ["spam@example.net", "dave@example.net"]].entries()
  ) {
    const tx = await send(mta.smtpPort, {
      from: "alice@example.org",
      to,
      content: `Subject: ${tag} ${i}\r\nFrom: alice@example.org\r\n\r\nHello.\r\n`,
    });
    rcpt.push(tx.rcpt.map((r) => r.code));
    expect(tx.end?.code).toBe(250);
  }
  const delivered = await Promise.all([0, 1].map(async (i) => {
    const d = await mta.waitForDelivery((d) =>
      d.headers.some(([n, v]) => n === "Subject" && v.trim() === `${tag} ${i}`)
    );
    return header(d, "X-Rules");
  }));
  return { rcpt, delivered };
}

/** `milter-test <args>` under `runtime`, as a user runs it. */
function milterTest(
  runtime: Runtime,
  args: string[],
): { out: () => string; stop: () => void; done: Promise<number | null> } {
  const [cmd, pre] = command(runtime, join(ROOT, "bin/milter-test.ts"));
  const child = spawn(cmd, [...pre, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.setEncoding("utf8").on("data", (t: string) => out += t);
  return {
    out: () => out,
    stop: () => child.kill("SIGTERM"),
    done: new Promise((resolve) => child.once("close", resolve)),
  };
}

describe.each(Object.keys(MTAS))("%s", (name) => {
  const startMta = MTAS[name];
  if (startMta === null) {
    test.skip(`${name} end to end, skipped outside CI: ${"missing" in provisioned ? provisioned.missing : ""}`, () => {});
    return;
  }
  test.each(RUNTIMES)(
    "under %s: delivers through the proxy what it delivers without it; its sessions replay as recorded",
    async (runtime) => {
      const filter = await startFilter({
        runtime,
        socket: "inet",
        fixture: "operations.ts",
        env: { RULES: rulesFile("A") },
      });
      const direct = await startMta(filter.spec);
      const without = await traffic(direct, `direct ${runtime}`);
      await direct.stop();

      const dir = mkdtempSync(join(tmpdir(), "milter-rec-"));
      const listen = `inet:${await freePort()}@127.0.0.1`;
      const proxy = milterTest(runtime, ["proxy", "--listen", listen, "--to", filter.spec, "--record", dir]);
      await expect.poll(proxy.out, { timeout: 30_000 }).toContain("milter-test proxy:");
      const proxied = await startMta(listen);
      const through = await traffic(proxied, `proxied ${runtime}`);
      expect(through).toEqual(without);
      expect(through).toEqual({ rcpt: [[250, 250], [550, 250]], delivered: [["A/A"], ["A/A"]] });
      await proxied.stop();
      proxy.stop();
      expect(await proxy.done).toBe(0);

      // Every session the MTA opened was recorded (Postfix's start-up probe among them).
      const recordings = loadRecordings(dir);
      expect(recordings.length).toBe(readdirSync(dir).length);
      const withMessages = recordings.filter(({ recording }) => recording.frames.some((f) => f.name === "eom"));
      expect(withMessages).toHaveLength(2);
      const same = milterTest(runtime, ["replay", dir, "--to", filter.spec]);
      expect(await same.done).toBe(0);
      expect(same.out()).toContain(`${recordings.length} recording(s), 0 with differences`);

      const changed = await startFilter({
        runtime,
        socket: "inet",
        fixture: "operations.ts",
        env: { RULES: rulesFile("B") },
      });
      for (const { recording } of withMessages) {
        const { differences } = await replay(recording, changed.spec);
        expect(differences.map((d) => [d.command, d.recorded, d.replayed])).toEqual([[
          "eom",
          ['addheader {"type":"addheader","name":"X-Rules","value":"A/A"}', "continue"],
          ['addheader {"type":"addheader","name":"X-Rules","value":"B/B"}', "continue"],
        ]]);
      }
      const differs = milterTest(runtime, ["replay", dir, "--to", changed.spec]);
      expect(await differs.done).toBe(1);
      expect(differs.out()).toContain(`${recordings.length} recording(s), 2 with differences`);
    },
  );
});
