/**
 * One MTA connection that stops reading must not freeze the others: the
 * writes of end of message (here a 20 MB replacebody) are done by that
 * connection's own libmilter thread, parked in the shim, so the JS thread
 * stays free. When the stalled write times out (settimeout), the message is
 * answered Tempfail (never accepted) and the failure is reported.
 */

import { connect, type Socket } from "node:net";
import { afterAll, expect, test } from "vitest";
import { ALL_STEPS, concat, cstrings, encodeFrame, type Frame, splitFrames, u32 } from "../src/testing/protocol.ts";
import { killAll, MESSAGE, script, startFilter } from "./helpers/filter.ts";

afterAll(killAll);

/** An MTA side that speaks just enough of the protocol by hand, and can stop reading. */
class RawMta {
  #buffer: Uint8Array = new Uint8Array(0);
  #frames: Frame[] = [];
  #wake: (() => void) | null = null;

  constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Uint8Array) => {
      const [frames, rest] = splitFrames(concat([this.#buffer, chunk]));
      this.#buffer = rest;
      this.#frames.push(...frames);
      this.#wake?.();
    });
  }

  static open(path: string): Promise<RawMta> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once("connect", () => resolve(new RawMta(socket)));
      socket.once("error", reject);
    });
  }

  send(code: string, data?: Uint8Array): void {
    this.socket.write(encodeFrame(code, data));
  }

  /** Sends a command and waits for its reply frame. */
  async command(code: string, data?: Uint8Array): Promise<Frame> {
    this.send(code, data);
    while (this.#frames.length === 0) await new Promise<void>((resolve) => (this.#wake = resolve));
    return this.#frames.shift()!;
  }
}

test("a 20 MB replacebody to an MTA that stopped reading stalls only its own connection", async () => {
  const filter = await startFilter({ env: { FLAGS: "CHGBODY,ADDHDRS", TIMEOUT: "4" } });
  const stalled = await RawMta.open(filter.spec.slice("unix:".length));
  expect((await stalled.command("O", concat([u32(6), u32(0x1ff), u32(ALL_STEPS & ~0x3ff)]))).code).toBe("O");
  expect((await stalled.command("C", concat([cstrings("stalled.example"), new Uint8Array([0x55])]))).code).toBe("c");
  const eom = JSON.stringify({ actions: [["replacebody", { repeat: "x", times: 20_000_000 }]] });
  stalled.send("D", concat([new Uint8Array([0x4d]), cstrings("{t_eom}", eom)]));
  expect((await stalled.command("M", cstrings("<a@example.org>"))).code).toBe("c");
  expect((await stalled.command("R", cstrings("<b@example.net>"))).code).toBe("c");
  stalled.send("E");
  stalled.socket.pause(); // the MTA stops reading: libmilter's write for this connection blocks
  const ctx = await filter.ctxOf("stalled.example");
  await filter.waitFor((e) => e.cb === "eom" && e.ctx === ctx);

  // Meanwhile a healthy connection has a whole message served.
  const healthy = await filter.client();
  await healthy.connect("healthy.example", null);
  const result = await healthy.message(MESSAGE, {
    envfrom: script({ eom: { actions: [["addheader", "X-Served", "while the other stalls"]] } }),
  });
  healthy.quit();
  expect(result.reply).toEqual({ action: "continue" });
  expect(result.modifications).toEqual([{ type: "addheader", name: "X-Served", value: "while the other stalls" }]);
  const served = filter.events.findIndex((e) => e.event === "callback" && e.cb === "eom" && e.ctx !== ctx);

  // The stalled write times out afterwards: reported, and answered Tempfail, never accepted.
  const failed = await filter.waitFor((e) => e.event === "reported" && e.ctx === ctx, 20_000);
  expect(failed.message).toContain("Milter.replacebody: libmilter refused it or could not send it to the MTA");
  expect(filter.events.indexOf(failed)).toBeGreaterThan(served);
  stalled.socket.destroy();
});
