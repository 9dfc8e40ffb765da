/**
 * Faults on the MTA side: disconnects at every stage, garbage, truncated and
 * oversized frames, a client that stalls. libmilter calls abort and close as
 * it documents, and the filter keeps serving everyone else.
 */

import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { MilterClient } from "../src/testing/mod.ts";
import { concat, cstrings, encodeFrame, u32 } from "../src/testing/protocol.ts";
import { type FilterProcess, killAll, startFilter } from "./helpers/filter.ts";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

afterAll(killAll);

/** Steps an MTA takes, in order; a disconnect follows the last one given. */
const STEPS: [string, (c: MilterClient) => Promise<unknown> | void][] = [
  ["connect", (c) => c.connect("fault.example", null)],
  ["helo", (c) => c.helo("fault.example")],
  ["envfrom", (c) => c.envfrom("<a@example.org>")],
  ["envrcpt", (c) => c.envrcpt("<b@example.net>")],
  ["data", (c) => c.data()],
  ["header", (c) => c.header("Subject", "faulty")],
  ["eoh", (c) => c.eoh()],
  ["body", (c) => c.body("part of the body\r\n")],
];

describe("the MTA disconnects", () => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await startFilter();
  });

  test.each(STEPS.map((_, i) => [STEPS[i][0], i] as const))(
    "after %s: abort and close as libmilter documents",
    async (stage, last) => {
      const client = await filter.client();
      const host = `after-${stage}.example`;
      await client.connect(host, null);
      for (const [, step] of STEPS.slice(1, last + 1)) await step(client);
      client.close(); // vanishes without QUIT, mid-stage
      const ctx = await filter.ctxOf(host);
      await filter.waitFor((e) => e.cb === "close" && e.ctx === ctx);
      const seen = filter.eventsOf(ctx).map((e) => e.cb);
      const inMessage = last >= 2; // MAIL FROM was sent
      expect(seen.filter((cb) => cb === "abort")).toHaveLength(inMessage ? 1 : 0);
      expect(seen.at(-1)).toBe("close");
      // The filter still serves a full message.
      const next = await filter.client();
      await next.connect("next.example", null);
      const result = await next.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "x" });
      expect(result.reply.action).toBe("continue");
      next.quit();
    },
  );
});

/**
 * Sends raw bytes on a fresh connection; resolves with the milliseconds until
 * the filter closes it, or rejects (and closes it) after `bound` ms.
 */
function raw(spec: string, bytes: Uint8Array, keepOpen = false, bound = 15_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connect(spec.slice("unix:".length));
    const started = Date.now();
    const timer = setTimeout(() => {
      reject(new Error(`the filter kept the connection open for ${bound} ms`));
      socket.destroy();
    }, bound);
    socket.on("connect", () => {
      socket.write(bytes);
      if (!keepOpen) socket.end();
    });
    socket.on("data", () => {});
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Date.now() - started);
    });
  });
}

describe("bad frames and stalls", () => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await startFilter({ env: { TIMEOUT: "1" } });
  });

  async function stillServes(on = filter): Promise<void> {
    const client = await on.client();
    await client.connect("ok.example", null);
    expect(
      (await client.message({ from: "<a@example.org>", rcpt: ["<b@example.net>"], headers: [], body: "x" })).reply
        .action,
    )
      .toBe("continue");
    client.quit();
  }

  test("garbage bytes", async () => {
    const garbage = Uint8Array.from({ length: 4096 }, (_, i) => (i * 131 + 7) % 256);
    await raw(filter.spec, garbage);
    await stillServes();
  });

  test("a truncated frame", async () => {
    const frame = encodeFrame("C", concat([cstrings("host.example"), new TextEncoder().encode("4")]));
    await raw(filter.spec, frame.subarray(0, frame.length - 3));
    await stillServes();
  });

  test("an oversized frame is refused without reading it: the connection closes with most of it unsent", async () => {
    // libmilter's default read timeout (7210 s) here: had it set out to read the 2 GiB frame, of which 1 KiB
    // comes, the connection would stay open for hours rather than close within the bound.
    const patient = await startFilter();
    const negotiate = encodeFrame("O", concat([u32(6), u32(0x1ff), u32(0x1fffff)]));
    const huge = concat([u32(0x7fffffff), new TextEncoder().encode("B"), new Uint8Array(1024)]);
    await raw(patient.spec, concat([negotiate, huge]), true, 5000);
    await stillServes(patient);
    await stillServes();
    await patient.kill();
  });

  test("a client that stalls mid-frame past settimeout is dropped, others served meanwhile", async () => {
    const negotiate = encodeFrame("O", concat([u32(6), u32(0x1ff), u32(0x1fffff)]));
    const partial = concat([negotiate, u32(200), new TextEncoder().encode("C")]); // promises 200 bytes, sends 1
    const stalled = raw(filter.spec, partial, true);
    await stillServes();
    expect(await stalled).toBeLessThan(8000); // settimeout(1): libmilter gives up on the read
    await stillServes();
  });
});

describe("socket files", () => {
  const mode = (spec: string): string => (statSync(spec.slice("unix:".length)).mode & 0o777).toString(8);

  test("a unix socket is owner/group-only (0660) by default, whether opensocket or main creates it", async () => {
    expect(mode((await startFilter()).spec)).toBe("660");
    const byMain = await startFilter({ env: { NO_OPENSOCKET: "1" } });
    expect(mode(byMain.spec)).toBe("660");
    const client = await byMain.client();
    expect((await client.connect("x.example", null)).action).toBe("continue");
    client.quit();
  });

  test("setsocketmode changes it", async () => {
    expect(mode((await startFilter({ env: { SOCKET_MODE: "600" } })).spec)).toBe("600");
  });

  test("opensocket(true) replaces a stale socket file; opensocket(false) says why it cannot", async () => {
    const dir = mkdtempSync(join(tmpdir(), "milter-stale-"));
    const spec = `unix:${join(dir, "milter.sock")}`;
    const killed = await startFilter({ env: { SOCKET: spec } });
    killed.child.kill("SIGKILL"); // leaves its socket file behind
    await killed.exited;
    expect(statSync(join(dir, "milter.sock")).isSocket()).toBe(true);
    await expect(startFilter({ env: { SOCKET: spec, RMSOCKET: "0" } })).rejects.toThrow(
      /Milter\.opensocket: cannot create unix:.*a stale socket file without opensocket\(true\)/,
    );
    const replacing = await startFilter({ env: { SOCKET: spec } });
    const client = await MilterClient.open(spec);
    expect((await client.connect("x.example", null)).action).toBe("continue");
    client.quit();
    await replacing.kill();
    expect(existsSync(join(dir, "milter.sock"))).toBe(false);
    rmSync(dir, { recursive: true });
  });
});

describe("TCP_NODELAY", () => {
  // The stall it removes is measured in bench/tcp-latency.ts; here, whether the option is set.
  test("an inet listening socket gets TCP_NODELAY by default", async () => {
    expect((await startFilter({ socket: "inet" })).events[0].nodelay).toBe(true);
    expect((await startFilter({ socket: "inet6" })).events[0].nodelay).toBe(true);
    expect((await startFilter({ socket: "unix" })).events[0].nodelay).toBeNull();
  });

  test("settcpnodelay(false) leaves Nagle on", async () => {
    expect((await startFilter({ socket: "inet", env: { NODELAY: "0" } })).events[0].nodelay).toBe(false);
  });
});
