/**
 * The macros milter-test sends by default are those a stock Postfix sends:
 * a fake milter records the macro names of every command, first behind this
 * machine's Postfix (a private instance, its milter_*_macros left at their
 * defaults), then behind milter-test, and the two lists must be the same.
 */

import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, test } from "vitest";
import { splitCStrings } from "../src/testing/protocol.ts";
import { cliInProcess } from "./helpers/cli.ts";
import { type Behaviour, closeFakeMilters, fakeMilter, usual } from "./helpers/fake-milter.ts";
import { postfixMilterSpec, PrivatePostfix, stopAllPostfix } from "./mta/postfix.ts";
import { send } from "./mta/smtp.ts";

const dir = mkdtempSync(join(tmpdir(), "milter-macros-"));
chmodSync(dir, 0o755); // Postfix's smtpd, as user postfix, reaches the socket in it
afterAll(async () => {
  await stopAllPostfix();
  await closeFakeMilters();
  rmSync(dir, { recursive: true, force: true });
});

/** Per connection, each command in order with the names of the macros sent before it (`"M {mail_addr} …"`). */
type Sessions = string[][];

/** A fake milter recording what {@linkcode Sessions} describes. */
async function recorder(name: string): Promise<{ spec: string; sessions: Sessions }> {
  const sessions: Sessions = [];
  let macros: string[] = [];
  const record: Behaviour = (reply, socket, frame) => {
    if (frame.code === "C") sessions.push([]);
    if (frame.code === "D") {
      macros = splitCStrings(frame.data.subarray(1)).filter((_, i) => i % 2 === 0);
      return;
    }
    sessions.at(-1)?.push([frame.code, ...macros.sort()].join(" "));
    macros = [];
    usual(frame.code, reply, socket);
  };
  const spec = await fakeMilter(
    join(dir, `${name}.sock`),
    Object.fromEntries([..."DCHMRTLNBE"].map((c) => [c, record])),
  );
  return { spec, sessions };
}

const MESSAGE = "From: alice@example.org\r\nTo: bob@example.net, carol@example.net\r\nSubject: hello\r\n\r\nHi.\r\n";

test("milter-test sends, stage by stage, the macros Postfix 3.7 sends with its defaults", async () => {
  const behindPostfix = await recorder("postfix");
  const postfix = await PrivatePostfix.start(postfixMilterSpec(behindPostfix.spec));
  const tx = await send(postfix.smtpPort, {
    from: "alice@example.org",
    to: ["bob@example.net", "carol@example.net"],
    content: MESSAGE,
  });
  expect(tx.end?.code).toBe(250);
  await postfix.stop();
  const behindCli = await recorder("cli");
  const result = await cliInProcess([behindCli.spec, "-"], new TextEncoder().encode(MESSAGE));
  expect(result.stderr).toBe("");
  // Postfix's last session is the message (an earlier one may be its start-up probe of the SMTP port).
  // It adds headers of its own (Received:, …): commands repeated in a row count once.
  const once = (session: string[]): string[] => session.filter((command, i) => command !== session[i - 1]);
  const expected = once(behindPostfix.sessions.at(-1)!);
  expect(expected).toEqual([
    "C _ j v {daemon_addr} {daemon_name}",
    "H",
    "M {mail_addr} {mail_host} {mail_mailer}",
    "R {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "R i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "T i",
    "L i",
    "N i",
    "B i",
    "E i",
  ]);
  expect(behindCli.sessions.map(once)).toEqual([expected]);
});
