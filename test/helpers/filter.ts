/**
 * Starts a fixture filter in a child process under one runtime, on its own
 * socket, collects the JSON events it prints, and always stops it.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { connectTo } from "../../src/runtime.ts";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ClientOptions, MilterClient, parseSpec } from "../../src/testing/mod.ts";
import { command, ROOT, type Runtime } from "./runtimes.ts";

export type SocketKind = "unix" | "inet" | "inet6";

// deno-lint-ignore no-explicit-any
export type Event = Record<string, any>;

export interface StartOptions {
  runtime?: Runtime;
  socket?: SocketKind;
  fixture?: string;
  env?: Record<string, string>;
  /** Milliseconds to wait for the ready event. */
  startTimeout?: number;
  /**
   * What tells that the filter is up: its `ready` event (the fixtures), or
   * its socket accepting a connection (the examples, which print nothing).
   */
  readyWhen?: "event" | "listening";
}

const live = new Set<FilterProcess>();

/**
 * With MILTER_TEST_NO_SHIM set (the `no-shim` project of vitest.config.ts),
 * every filter runs as on a platform without a prebuilt shim: the shim path
 * names a file that does not exist, and the binding falls back to calling
 * libmilter's callbacks directly.
 */
export const NO_SHIM: boolean = process.env.MILTER_TEST_NO_SHIM === "1";
const SHIM_ENV: Record<string, string> = NO_SHIM
  ? { MILTER_SHIM_PATH: "/nonexistent/milter-test-no-shim/libmilter_shim.so" }
  : {};

/** A free TCP port on the loopback interface of `host`. */
export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, host, () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export class FilterProcess {
  readonly events: Event[] = [];
  stderr = "";
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #waiters = new Set<() => void>();

  constructor(readonly child: ChildProcess, readonly spec: string, readonly dir: string) {
    let pending = "";
    child.stdout!.setEncoding("utf8").on("data", (text: string) => {
      pending += text;
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        if (!line.trim()) continue;
        try {
          this.events.push(JSON.parse(line));
        } catch {
          this.events.push({ event: "stdout", line });
        }
      }
      for (const wake of [...this.#waiters]) wake();
    });
    child.stderr!.setEncoding("utf8").on("data", (text: string) => {
      this.stderr += text;
    });
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        live.delete(this);
        rmSync(dir, { recursive: true, force: true });
        for (const wake of [...this.#waiters]) wake();
        resolve({ code, signal });
      });
    });
  }

  /** Waits until an event matches `predicate`, returning it. */
  waitFor(predicate: (event: Event) => boolean, timeout = 10_000): Promise<Event> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const found = this.events.find(predicate);
        if (found) {
          cleanup();
          resolve(found);
          return true;
        }
        if (this.child.exitCode !== null || this.child.signalCode !== null) {
          cleanup();
          reject(
            new Error(
              `filter exited (${this.child.exitCode ?? this.child.signalCode}) before the event; events: ${
                JSON.stringify(this.events.slice(-5))
              }; stderr:\n${this.stderr}`,
            ),
          );
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(
            `no matching event within ${timeout} ms; events:\n${
              JSON.stringify(this.events.slice(-20))
            }\nstderr:\n${this.stderr}`,
          ),
        );
      }, timeout);
      const wake = (): void => void check();
      const cleanup = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(wake);
      };
      this.#waiters.add(wake);
      check();
    });
  }

  /** The Ctx id of the connection whose connect callback got `host`, once its event arrives. */
  async ctxOf(host: string): Promise<number> {
    return (await this.waitFor((e) => e.cb === "connect" && e.args[0] === host)).ctx;
  }

  /** The callback events of one connection. */
  eventsOf(ctx: number): Event[] {
    return this.callbacks().filter((e) => e.ctx === ctx);
  }

  /** The callback events, optionally of one callback. */
  callbacks(cb?: string): Event[] {
    return this.events.filter((e) => e.event === "callback" && (cb === undefined || e.cb === cb));
  }

  /** A new MTA-side client connected and negotiated. */
  client(options?: ClientOptions): Promise<MilterClient> {
    return MilterClient.open(this.spec, options);
  }

  /** Sends a signal and waits for the process to exit. */
  async signal(signal: NodeJS.Signals = "SIGTERM"): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return await this.exited;
  }

  /** Stops the process for good (SIGTERM, then SIGKILL after 10 s). */
  async kill(): Promise<void> {
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
    await this.signal("SIGTERM");
    clearTimeout(timer);
  }
}

/** Starts a fixture filter and waits for it to listen. */
export async function startFilter(options: StartOptions = {}): Promise<FilterProcess> {
  const runtime = options.runtime ?? "node";
  const dir = mkdtempSync(join(tmpdir(), "milter-test-"));
  const kind = options.socket ?? "unix";
  const spec = kind === "unix"
    ? `unix:${join(dir, "milter.sock")}`
    : kind === "inet"
    ? `inet:${await freePort()}@127.0.0.1`
    : `inet6:${await freePort("::1")}@::1`;
  const [cmd, args] = command(runtime, join(ROOT, "test/fixtures", options.fixture ?? "scripted.ts"));
  const child = spawn(cmd, args, {
    cwd: ROOT,
    env: { ...process.env, SOCKET: spec, MILTER_SOCKET: spec, ...SHIM_ENV, ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const filter = new FilterProcess(child, spec, dir);
  live.add(filter);
  if (options.readyWhen === "listening") {
    const exited = (): string | null => child.exitCode !== null || child.signalCode !== null ? filter.stderr : null;
    await waitListening(spec, exited, options.startTimeout ?? 30_000);
  } else await filter.waitFor((e) => e.event === "ready", options.startTimeout ?? 30_000);
  return filter;
}

/**
 * Resolves once a connection to `spec` succeeds (a libmilter filter sees it
 * close at once). `exited` returns why the filter is gone, or `null` while it runs.
 */
export async function waitListening(spec: string, exited: () => string | null, timeout = 30_000): Promise<void> {
  const target = parseSpec(spec);
  for (const deadline = Date.now() + timeout; Date.now() < deadline;) {
    const gone = exited();
    if (gone !== null) throw new Error(`the filter on ${spec} exited before listening:\n${gone}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connectTo(target);
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`the filter did not listen on ${spec} within ${timeout} ms`);
}

/** Kills every filter still running (for afterEach/afterAll). */
export async function killAll(): Promise<void> {
  await Promise.all([...live].map((f) => f.kill()));
}

/** Sends `{t_<cb>}` instructions as macros: helper for scripted tests. */
export function script(instructions: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(Object.entries(instructions).map(([cb, i]) => [`{t_${cb}}`, JSON.stringify(i)]));
}

/** The reply of a scripted filter whose callback failed: Tempfail with 451 4.3.0. */
export const FAILED_REPLY = {
  action: "replycode",
  text: "451 4.3.0 mail filter scripted failed; try again later",
  smtpCode: 451,
} as const;

/** A small message for `MilterClient.message`. */
export const MESSAGE: { from: string; rcpt: string[]; headers: [string, string][]; body: string } = {
  from: "<a@example.org>",
  rcpt: ["<b@example.net>"],
  headers: [["Subject", "hi"]],
  body: "x\r\n",
};
