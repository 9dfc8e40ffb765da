/**
 * The same scenario under Node, Deno and Bun, each installed from npm and
 * started from this suite: the binding's koffi features (registered
 * callbacks called from libmilter's threads, .async, output pointers,
 * variadic calls, struct by value) and its policies on every runtime.
 */

import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { MilterClient } from "../src/testing/mod.ts";
import { type FilterProcess, freePort, killAll, script, startFilter } from "./helpers/filter.ts";
import { command, ROOT, type Runtime, RUNTIMES, runtimeVersion } from "./helpers/runtimes.ts";

afterAll(killAll);

describe.each(RUNTIMES)("under %s", (runtime: Runtime) => {
  let filter: FilterProcess;
  beforeAll(async () => {
    runtimeVersion(runtime); // a missing runtime fails here, loudly
    filter = await startFilter({
      runtime,
      socket: "inet",
      env: {
        FLAGS: "ADDHDRS,CHGHDRS,CHGBODY,ADDRCPT,SETSYMLIST",
        NEGOTIATE: JSON.stringify({
          result: ["Continue", ["ADDHDRS", "CHGHDRS", "CHGBODY", "ADDRCPT", "SETSYMLIST"], []],
          symlist: { ENVFROM: "{mail_addr} i" },
        }),
      },
    });
  });

  test("runs on that runtime", () => {
    expect(filter.events[0]).toMatchObject({ event: "ready", runtime });
  });

  test("a full session: arguments, macros, private data, replies and modifications", async () => {
    const client = await filter.client();
    expect(client.negotiated.macros).toEqual({ ENVFROM: "{mail_addr} i" });
    await client.connect("session.example", { family: "inet6", address: "2001:db8::7", port: 2525 }, {
      "{client_addr}": "2001:db8::7",
      ...script({ connect: { setpriv: { runtime } } }),
    });
    await client.envfrom("<a@example.org>", ["SIZE=10"], {
      ...script({ envrcpt: { mlreply: ["550", "5.1.1", ["no such user", "here"]], stat: "Reject" } }),
      i: "Q123",
    });
    expect((await client.envrcpt("<nobody@example.net>")).text).toBe("550-5.1.1 no such user\r\n550 5.1.1 here");
    const result = await client.message({
      from: "<a@example.org>",
      rcpt: ["<b@example.net>"],
      headers: [["Subject", "s"]],
      body: "body\r\n",
    }, {
      envfrom: script({
        eom: {
          actions: [["addheader", "X-Runtime", runtime], ["chgheader", "Subject", 1, "changed"], [
            "addrcpt",
            "<c@example.net>",
          ], ["replacebody", { sequence: 70_000 }]],
        },
      }),
    });
    expect(result.reply.action).toBe("continue");
    expect(result.modifications.filter((m) => m.type !== "replacebody")).toEqual([
      { type: "addheader", name: "X-Runtime", value: runtime },
      { type: "chgheader", index: 1, name: "Subject", value: "changed" },
      { type: "addrcpt", rcpt: "<c@example.net>" },
    ]);
    expect(Array.from(result.body!)).toEqual(Array.from({ length: 70_000 }, (_, i) => (i * 7) % 256));
    client.quit();
    const ctx = (await filter.waitFor((e) => e.cb === "connect" && e.args[0] === "session.example")).ctx;
    await filter.waitFor((e) => e.cb === "close" && e.ctx === ctx);
    const mine = filter.callbacks().filter((e) => e.ctx === ctx);
    expect(mine.at(-1)!.cb).toBe("close");
    expect(mine.map((e) => e.cb).slice(0, 2)).toEqual(["negotiate", "connect"]);
    expect(mine[1].args).toEqual(["session.example", { family: "inet6", address: "2001:db8::7", port: 2525 }]);
    expect(mine.find((e) => e.cb === "envfrom")!.args).toEqual(["<a@example.org>", ["SIZE=10"]]);
    expect(mine.find((e) => e.cb === "envfrom")!.macros).toMatchObject({ i: "Q123", "{client_addr}": "2001:db8::7" });
    expect(mine.find((e) => e.cb === "eom")!.priv).toEqual({ runtime });
  });

  test("exceptions and bad returns answer 451 4.3.0, contexts refuse misuse", async () => {
    const client = await filter.client();
    await client.connect(
      "misuse.example",
      null,
      script({ helo: { throw: "boom", later: [["getsymval", "i"]] }, unknown: { stat: 42 } }),
    );
    expect((await client.helo("x")).text).toBe("451 4.3.0 mail filter scripted failed; try again later");
    expect((await client.unknown("XYZZY")).text).toBe("451 4.3.0 mail filter scripted failed; try again later");
    const ctx = (await filter.waitFor((e) => e.cb === "connect" && e.args[0] === "misuse.example")).ctx;
    const later = await filter.waitFor((e) => e.event === "later" && e.ctx === ctx);
    // Set by helo, whose call is over: a stale use.
    expect(later.result.message).toMatch(
      /^Milter\.getsymval: Milter\.Ctx#\d+ is used by code its helo callback left running/,
    );
    await filter.waitFor((e) => e.event === "reported" && e.ctx === ctx && e.kind === "bad-return");
    client.quit();
  });

  test("200 simultaneous connections from libmilter's threads", async () => {
    const outcomes = await Promise.all(Array.from({ length: 200 }, async () => {
      const client = await MilterClient.open(filter.spec, { timeout: 30_000 });
      await client.connect("many.example", null);
      const reply = await client.helo("many");
      client.quit();
      return reply.action;
    }));
    expect(outcomes.filter((a) => a === "continue")).toHaveLength(200);
  });

  test("SIGTERM stops it cleanly with exit code 0", async () => {
    expect(await filter.signal("SIGTERM")).toEqual({ code: 0, signal: null });
    expect(filter.events.at(-1)).toEqual({ event: "stopped", signalListeners: [0, 0, 0] });
  });

  test("the README's demo runs", async () => {
    const [cmd, args] = command(runtime, join(ROOT, "examples/demo.ts"));
    const { stdout } = await promisify(execFile)(cmd, args, {
      cwd: ROOT,
      env: { ...process.env, MILTER_SOCKET: `inet:${await freePort()}@127.0.0.1` },
      timeout: 60_000,
    });
    expect(stdout).toContain("envrcpt  replycode 550 5.7.1 no mail for <spam@example.net>");
    expect(stdout).toMatch(
      /modification: \{"type":"addheader","name":"X-Demo","value":"checked by 1\.0\.1 for client\.example \(2 rcpt\)"\}/,
    );
    expect(stdout.trim().split("\n").at(-1)).toBe("demo filter stopped");
  });
});
