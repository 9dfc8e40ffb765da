/**
 * Every callback receives exactly what the MTA sent, through real libmilter
 * over real sockets: host and address for inet, inet6 and unix clients,
 * ESMTP arguments in wire order, headers, body chunks as copies, macros via
 * getsymval, and one Ctx per connection.
 */

import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type FilterProcess, killAll, script, type SocketKind, startFilter } from "./helpers/filter.ts";

afterAll(killAll);

describe.each<SocketKind>(["unix", "inet", "inet6"])("over a %s socket", (socket) => {
  let filter: FilterProcess;
  beforeAll(async () => {
    filter = await startFilter({ socket });
  });

  test("a full session reaches every callback with its exact arguments", async () => {
    const client = await filter.client();
    await client.connect("client.example", { family: "inet", address: "192.0.2.7", port: 4711 }, {
      "{client_addr}": "192.0.2.7",
      j: "mx.example",
      _: "client.example [192.0.2.7]",
    });
    await client.helo("helo.example");
    await client.envfrom("<alice@example.org>", ["SIZE=123", "BODY=8BITMIME"], {
      i: "4Qx1",
      "{mail_addr}": "alice@example.org",
    });
    await client.envrcpt("<bob@example.net>", ["NOTIFY=NEVER", "ORCPT=rfc822;bob@example.net"], {
      "{rcpt_addr}": "bob@example.net",
    });
    await client.data();
    await client.header("Subject", "Hi there");
    await client.header("X-Folded", "one\r\n\ttwo");
    await client.eoh();
    await client.body("first line\r\n");
    await client.body("second line\r\n");
    expect((await client.eom()).reply.action).toBe("continue");
    expect((await client.unknown("XFOO bar")).action).toBe("continue");
    client.quit();
    await filter.waitFor((e) => e.cb === "close");

    const calls = filter.callbacks();
    const ctx = calls[0].ctx;
    expect(calls.every((e) => e.ctx === ctx)).toBe(true);
    expect(calls.map((e) => [e.cb, e.args])).toEqual([
      ["connect", ["client.example", { family: "inet", address: "192.0.2.7", port: 4711 }]],
      ["helo", ["helo.example"]],
      ["envfrom", ["<alice@example.org>", ["SIZE=123", "BODY=8BITMIME"]]],
      ["envrcpt", ["<bob@example.net>", ["NOTIFY=NEVER", "ORCPT=rfc822;bob@example.net"]]],
      ["data", []],
      ["header", ["Subject", "Hi there"]],
      ["header", ["X-Folded", "one\r\n\ttwo"]],
      ["eoh", []],
      ["body", [{ length: 12, isUint8Array: true, text: "first line\r\n" }]],
      ["body", [{ length: 13, isUint8Array: true, text: "second line\r\n" }]],
      ["eom", []],
      ["unknown", ["XFOO bar"]],
      ["close", []],
    ]);
    // Macros of a stage stay visible in later callbacks, as libmilter keeps them.
    expect(calls[0].macros).toEqual({ "{client_addr}": "192.0.2.7", j: "mx.example", _: "client.example [192.0.2.7]" });
    expect(filter.callbacks("envrcpt")[0].macros).toMatchObject({
      i: "4Qx1",
      "{mail_addr}": "alice@example.org",
      "{rcpt_addr}": "bob@example.net",
    });
    expect(filter.callbacks("helo")[0].macros["{mail_addr}"]).toBeUndefined();
  });

  test.each(
    [
      ["inet6", { family: "inet6", address: "2001:db8::25", port: 25 }],
      ["v4-mapped inet6", { family: "inet6", address: "::ffff:192.0.2.1", port: 587 }],
      ["unix", { family: "unix", path: "/var/spool/postfix/private/smtpd" }],
      ["unknown family", null],
    ] as const,
  )("connect decodes a %s client address", async (_name, addr) => {
    const client = await filter.client();
    const host = `${_name.replaceAll(" ", "-")}.example`;
    await client.connect(host, addr);
    const event = await filter.waitFor((e) => e.cb === "connect" && e.args[0] === host);
    expect(event.args).toEqual([host, addr]);
    client.quit();
  });

  test("each connection has its own Ctx, stable across its callbacks", async () => {
    const [a, b] = [await filter.client(), await filter.client()];
    await a.connect("a.example", null);
    await b.connect("b.example", null);
    await a.helo("a");
    await b.helo("b");
    const [ctxA, ctxB] = [await filter.ctxOf("a.example"), await filter.ctxOf("b.example")];
    expect((await filter.waitFor((e) => e.cb === "helo" && e.args[0] === "a" && e.ctx === ctxA)).ctx).toBe(ctxA);
    expect((await filter.waitFor((e) => e.cb === "helo" && e.args[0] === "b" && e.ctx === ctxB)).ctx).toBe(ctxB);
    expect(ctxA).not.toBe(ctxB);
    a.quit();
    b.quit();
  });

  test("a large body arrives in chunks that sum to the whole", async () => {
    const client = await filter.client();
    await client.connect("big.example", null);
    await client.envfrom("<a@example.org>");
    await client.envrcpt("<b@example.org>");
    await client.data();
    await client.eoh();
    const body = "0123456789abcdef".repeat(100 * 1024 / 16); // 100 KiB
    await client.body(body);
    await client.eom();
    client.quit();
    const ctx = await filter.ctxOf("big.example");
    await filter.waitFor((e) => e.cb === "eom" && e.ctx === ctx);
    const chunks = filter.eventsOf(ctx).filter((e) => e.cb === "body").map((e) => e.args[0]);
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.reduce((n, c) => n + c.length, 0)).toBe(body.length);
    expect(chunks.map((c) => c.text).join("")).toBe(body);
  });

  test("abort ends the message, close the connection", async () => {
    const client = await filter.client();
    await client.connect("abort.example", null, script({ abort: {}, close: {} }));
    await client.envfrom("<a@example.org>");
    client.abort();
    await client.envfrom("<again@example.org>");
    client.close(); // vanishes without QUIT
    const ctx = await filter.ctxOf("abort.example");
    await filter.waitFor((e) => e.cb === "close" && e.ctx === ctx);
    expect(filter.eventsOf(ctx).map((e) => e.cb)).toEqual(["connect", "envfrom", "abort", "envfrom", "abort", "close"]);
  });
});
