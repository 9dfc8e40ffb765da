/**
 * A private Sendmail 8.17 owned by the test run, never installed: Debian's
 * packages extracted by scripts/sendmail-tree.sh under .cache/sendmail/. Each
 * SMTP connection to `smtpPort` runs one `sendmail -C <private cf> -bs` (SMTP
 * on stdin and stdout, no daemon) in a private UTS and mount namespace, where
 * the host name is qualified and /etc/hosts is its own. The cf routes every
 * recipient to a mailer script that writes each message, with its envelope, to
 * a file; with DeliveryMode=interactive the file exists when the client sees
 * 250. Queue, pid, statistics and delivered messages live in a temp dir that
 * stop() removes.
 */

import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { promisify } from "node:util";
import { ROOT } from "../helpers/runtimes.ts";

const run = promisify(execFile);

/** The host name Sendmail runs under (qualified: an unqualified one costs 60 s per run). */
export const SENDMAIL_HOST = "mx.sendmail-test.example";

/** One message the mailer script received: its envelope and content. */
export interface Delivered {
  readonly file: string;
  readonly mailFrom: string;
  readonly rcptTo: string[];
  readonly headers: [string, string][];
  readonly body: string;
}

/** One queue file: `qf` (waiting) or `hf` (quarantined, with its reason). */
export interface Queued {
  readonly id: string;
  readonly quarantined: boolean;
  /** The `q` record: the reason given to quarantine. */
  readonly reason: string | null;
  readonly sender: string;
  readonly recipients: string[];
}

/**
 * The extracted Sendmail tree, or why there is none. Runs
 * scripts/sendmail-tree.sh, which downloads and extracts the packages once.
 */
export function provisionSendmail(): { tree: string } | { missing: string } {
  if (process.platform !== "linux") return { missing: "a private Sendmail needs Linux namespaces" };
  if (process.getuid?.() !== 0) return { missing: "a private Sendmail needs root (unshare --uts --mount)" };
  try {
    const tree = execFileSync("sh", [join(ROOT, "scripts/sendmail-tree.sh")], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    }).trim();
    return { tree };
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    return { missing: `scripts/sendmail-tree.sh failed: ${(e.stderr || e.message).trim().slice(-2000)}` };
  }
}

/**
 * The README's `INPUT_MAIL_FILTER` line with only its socket replaced by
 * `spec` (written as libmilter writes it, which is also Sendmail's form).
 */
export function withSocket(line: string, spec: string): string {
  const socket = /S=inet:8890@127\.0\.0\.1/;
  if (!socket.test(line)) throw new Error(`no S=inet:8890@127.0.0.1 in ${line}`);
  return line.replace(socket, `S=${spec}`);
}

/** Finds the directory holding the extracted libwrap.so.0. */
function libDir(tree: string): string {
  for (const base of ["usr/lib", "lib"]) {
    const dir = join(tree, base);
    if (!existsSync(dir)) continue;
    for (const sub of readdirSync(dir)) {
      if (existsSync(join(dir, sub, "libwrap.so.0"))) return join(dir, sub);
    }
  }
  throw new Error(`no libwrap.so.0 under ${tree}`);
}

/** Writes the message (stdin) with its envelope ($1 = sender, then the recipients) to a file of its own. */
const DELIVER = (out: string): string =>
  `#!/bin/sh
tmp=$(mktemp "${out}/.new.XXXXXX")
{
  printf 'X-Envelope-From: %s\\n' "$1"
  shift
  for rcpt in "$@"; do printf 'X-Envelope-To: %s\\n' "$rcpt"; done
  cat
} >"$tmp" && mv "$tmp" "$tmp.eml"
`;

/**
 * Inside the new namespaces: a dotted host name and private hosts and
 * nsswitch files (the bind mounts stay in this mount namespace), then Sendmail.
 */
const NAMESPACE =
  'echo "$1" >/proc/sys/kernel/hostname && mount --bind "$2" /etc/hosts && mount --bind "$3" /etc/nsswitch.conf && shift 3 && exec "$@"';

export class PrivateSendmail {
  readonly #server: Server;
  readonly #children = new Set<ChildProcess>();
  readonly #sockets = new Set<Socket>();
  /** What the Sendmail runs wrote on stderr. */
  stderr = "";

  private constructor(readonly tree: string, readonly dir: string, readonly smtpPort: number, server: Server) {
    this.#server = server;
  }

  get cf(): string {
    return join(this.dir, "sendmail.cf");
  }

  /**
   * Builds a private sendmail.cf from a `.mc` holding `filterLine` (an
   * `INPUT_MAIL_FILTER(...)` line, or nothing for no filter) and listens for
   * SMTP clients on a free loopback port.
   */
  static async start(tree: string, filterLine: string | null): Promise<PrivateSendmail> {
    const dir = mkdtempSync(join(tmpdir(), "milter-sendmail-"));
    try {
      for (const sub of ["queue", "out"]) mkdirSync(join(dir, sub), { mode: 0o700 });
      writeFileSync(join(dir, "deliver"), DELIVER(join(dir, "out")), { mode: 0o755 });
      writeFileSync(join(dir, "hosts"), `127.0.0.1\t${SENDMAIL_HOST} mx localhost\n::1\tlocalhost\n`);
      writeFileSync(join(dir, "nsswitch.conf"), "hosts: files\n");
      writeFileSync(join(dir, "service.switch"), "hosts files\naliases files\n");
      writeFileSync(join(dir, "statistics"), "");
      const mc = [
        "divert(-1)",
        "divert(0)dnl",
        "VERSIONID(`milterjs end-to-end tests')dnl",
        "OSTYPE(`linux')dnl",
        "undefine(`ALIAS_FILE')dnl",
        `define(\`QUEUE_DIR', \`${join(dir, "queue")}')dnl`,
        `define(\`STATUS_FILE', \`${join(dir, "statistics")}')dnl`,
        `define(\`HELP_FILE', \`${join(tree, "etc/mail/helpfile")}')dnl`,
        `define(\`confPID_FILE', \`${join(dir, "sendmail.pid")}')dnl`,
        `define(\`confSERVICE_SWITCH_FILE', \`${join(dir, "service.switch")}')dnl`,
        // The temp dir is under /tmp, whose sticky bit Sendmail's file checks must trust.
        "define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl",
        // Delivered before the 250 to the final dot.
        "define(`confDELIVERY_MODE', `interactive')dnl",
        // Past QueueLA (8 by default) Sendmail only queues, past RefuseLA it refuses: not on a busy test machine.
        "define(`confQUEUE_LA', `1000')dnl",
        "define(`confREFUSE_LA', `1000')dnl",
        "FEATURE(`accept_unresolvable_domains')dnl",
        "FEATURE(`nocanonify')dnl",
        ...(filterLine ? [`${filterLine}dnl`] : []),
        "MAILER_DEFINITIONS",
        `Mfile, P=${join(dir, "deliver")}, F=lsmnDFMS, A=deliver $f $u`,
        "LOCAL_RULE_0",
        "R$+\t$#file $@ localhost $: $1",
        "",
      ].join("\n");
      writeFileSync(join(dir, "sendmail.mc"), mc);
      const { stdout } = await run(join(tree, "usr/bin/m4"), [
        `-D_CF_DIR_=${join(tree, "usr/share/sendmail/cf")}/`,
        join(tree, "usr/share/sendmail/cf/m4/cf.m4"),
        join(dir, "sendmail.mc"),
      ]);
      writeFileSync(join(dir, "sendmail.cf"), stdout);
      chmodSync(dir, 0o700);
    } catch (error) {
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", resolve);
    });
    const instance = new PrivateSendmail(tree, dir, (server.address() as { port: number }).port, server);
    server.on("connection", (socket) => instance.#session(socket));
    live.add(instance);
    return instance;
  }

  /** Runs `sendmail` in its namespace with these arguments. */
  #spawn(args: string[]): ChildProcess {
    return spawn(
      "unshare",
      [
        "--uts",
        "--mount",
        "--",
        "sh",
        "-c",
        NAMESPACE,
        "sh",
        SENDMAIL_HOST,
        join(this.dir, "hosts"),
        join(this.dir, "nsswitch.conf"),
        join(this.tree, "usr/libexec/sendmail/sendmail"),
        "-C",
        this.cf,
        ...args,
      ],
      { env: { ...process.env, LD_LIBRARY_PATH: libDir(this.tree) }, stdio: ["pipe", "pipe", "pipe"] },
    );
  }

  /** One SMTP connection: one `sendmail -bs` speaking over it. */
  #session(socket: Socket): void {
    const child = this.#spawn(["-bs"]);
    this.#children.add(child);
    this.#sockets.add(socket);
    socket.on("close", () => this.#sockets.delete(socket));
    socket.on("error", () => {});
    child.stdin!.on("error", () => {});
    socket.pipe(child.stdin!);
    child.stdout!.pipe(socket);
    child.stderr!.setEncoding("utf8").on("data", (text: string) => (this.stderr += text));
    child.on("exit", () => {
      this.#children.delete(child);
      socket.end();
    });
  }

  /** Every message delivered so far. */
  delivered(): Delivered[] {
    const out = join(this.dir, "out");
    return readdirSync(out).filter((f) => f.endsWith(".eml")).sort().map((f) => parseDelivered(join(out, f)));
  }

  /** Waits until a delivered message matches `predicate`. */
  async waitForDelivery(predicate: (d: Delivered) => boolean, timeout = 10_000): Promise<Delivered> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const found = this.delivered().find(predicate);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`not delivered within ${timeout} ms; stderr:\n${this.stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** The queue, read from its files. */
  queue(): Queued[] {
    const queue = join(this.dir, "queue");
    return readdirSync(queue).filter((f) => /^[qh]f/.test(f)).map((file) => {
      const records = readFileSync(join(queue, file), "latin1").split("\n");
      const field = (tag: string): string[] => records.filter((r) => r.startsWith(tag)).map((r) => r.slice(tag.length));
      return {
        id: file.slice(2),
        quarantined: file.startsWith("hf"),
        reason: field("q")[0] ?? null,
        sender: field("S")[0] ?? "",
        recipients: field("r").map((r) => r.replace(/^rfc822; /, "")),
      };
    });
  }

  /** Runs `sendmail` of this instance with `args` (no SMTP: `-bp`, `-q…`) and returns what it printed. */
  async command(args: string[]): Promise<string> {
    const child = this.#spawn(args);
    child.stdin!.end();
    let stdout = "";
    child.stdout!.setEncoding("utf8").on("data", (text: string) => (stdout += text));
    child.stderr!.setEncoding("utf8").on("data", (text: string) => (this.stderr += text));
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    if (code !== 0) throw new Error(`sendmail ${args.join(" ")} exited ${code}: ${this.stderr}`);
    return stdout;
  }

  /** Closes the port, ends every Sendmail still running and removes every file. */
  async stop(): Promise<void> {
    live.delete(this);
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const socket of this.#sockets) socket.destroy();
    for (const child of this.#children) child.kill("SIGKILL");
    await closed;
    while (this.#children.size) await new Promise((resolve) => setTimeout(resolve, 20));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const live = new Set<PrivateSendmail>();

/** Stops every Sendmail still running (for afterAll). */
export async function stopAllSendmail(): Promise<void> {
  await Promise.all([...live].map((s) => s.stop()));
}

/** Parses a delivered file: X-Envelope-From and X-Envelope-To records, then the message. */
function parseDelivered(file: string): Delivered {
  const text = readFileSync(file, "latin1").replace(/\r\n/g, "\n");
  const blank = text.indexOf("\n\n");
  const head = blank < 0 ? text : text.slice(0, blank);
  const headers: [string, string][] = [];
  for (const line of head.split("\n")) {
    if (/^[ \t]/.test(line) && headers.length) headers[headers.length - 1][1] += `\n${line}`;
    else {
      const colon = line.indexOf(":");
      if (colon > 0) headers.push([line.slice(0, colon), line.slice(colon + 1).trim()]);
    }
  }
  const value = (name: string): string[] => headers.filter(([n]) => n === name).map(([, v]) => v);
  return {
    file,
    mailFrom: value("X-Envelope-From")[0] ?? "",
    rcptTo: value("X-Envelope-To"),
    headers: headers.filter(([n]) => !/^X-Envelope-(From|To)$/.test(n)),
    body: blank < 0 ? "" : text.slice(blank + 2),
  };
}
