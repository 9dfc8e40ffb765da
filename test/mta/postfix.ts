/**
 * A private Postfix instance owned by the test run: its own config, queue
 * and data directories under a temp dir, SMTP on a free loopback port, every
 * message relayed to Postfix's smtp-sink, which dumps each delivery (with
 * its envelope) to a file. Nothing system-wide is touched, and stop() removes
 * everything, even after a failed test.
 */

import { type ChildProcess, execFile, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { freePort } from "../helpers/filter.ts";

const run = promisify(execFile);

/** One message smtp-sink received: its envelope and content. */
export interface Delivered {
  readonly file: string;
  readonly mailFrom: string;
  readonly rcptTo: string[];
  /** Each RCPT TO command's arguments as smtp-sink received them (`<a@b> NOTIFY=NEVER ORCPT=…`). */
  readonly rcptArgs: string[];
  /** The message as delivered (after smtp-sink's own X- records). */
  readonly headers: [string, string][];
  readonly body: string;
}

/** Converts a libmilter socket spec to the form Postfix writes (`inet:host:port`, `unix:/path`). */
export function postfixMilterSpec(spec: string): string {
  const inet = /^inet6?:(\d+)@(.+)$/.exec(spec);
  return inet ? `inet:${inet[2]}:${inet[1]}` : spec;
}

function userIds(name: string): { uid: number; gid: number } {
  const line = readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no user ${name}: is Debian's postfix package installed?`);
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}

const MASTER_CF = (smtpPort: number): string =>
  `
127.0.0.1:${smtpPort} inet n - n - - smtpd
pickup     unix  n - n 60   1 pickup
cleanup    unix  n - n -    0 cleanup
qmgr       unix  n - n 300  1 qmgr
rewrite    unix  - - n -    - trivial-rewrite
bounce     unix  - - n -    0 bounce
defer      unix  - - n -    0 bounce
trace      unix  - - n -    0 bounce
verify     unix  - - n -    1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -    - proxymap
proxywrite unix  - - n -    1 proxymap
smtp       unix  - - n -    - smtp
relay      unix  - - n -    - smtp
showq      unix  n - n -    - showq
error      unix  - - n -    - error
retry      unix  - - n -    - error
discard    unix  - - n -    - discard
anvil      unix  - - n -    1 anvil
scache     unix  - - n -    1 scache
postlog    unix-dgram n - n - 1 postlogd
`.trimStart();

export class PrivatePostfix {
  readonly #sink: ChildProcess;

  private constructor(
    readonly dir: string,
    readonly smtpPort: number,
    readonly sinkPort: number,
    sink: ChildProcess,
  ) {
    this.#sink = sink;
  }

  get configDir(): string {
    return join(this.dir, "etc");
  }

  /**
   * Starts Postfix with `smtpd_milters = milter` (a Postfix milter spec, or
   * empty for none) and any extra main.cf settings.
   */
  static async start(milter: string, extra: Record<string, string> = {}): Promise<PrivatePostfix> {
    const dir = mkdtempSync(join(tmpdir(), "milter-postfix-"));
    chmodSync(dir, 0o755);
    const postfix = userIds("postfix");
    for (const sub of ["etc", "spool", "data", "sink"]) mkdirSync(join(dir, sub));
    for (const sub of ["data", "sink"]) chownSync(join(dir, sub), postfix.uid, postfix.gid);
    const [smtpPort, sinkPort] = [await freePort(), await freePort()];
    const settings: Record<string, string> = {
      compatibility_level: "3.6",
      queue_directory: join(dir, "spool"),
      data_directory: join(dir, "data"),
      maillog_file: join(dir, "maillog"),
      maillog_file_prefixes: dir,
      mail_owner: "postfix",
      setgid_group: "postdrop",
      myhostname: "mx.postfix-test.example",
      mydomain: "postfix-test.example",
      mydestination: "",
      local_recipient_maps: "",
      alias_maps: "",
      alias_database: "",
      inet_interfaces: "127.0.0.1",
      inet_protocols: "ipv4",
      mynetworks: "127.0.0.0/8",
      smtpd_relay_restrictions: "permit_mynetworks, reject",
      relayhost: `[127.0.0.1]:${sinkPort}`,
      smtp_tls_security_level: "none",
      smtpd_tls_security_level: "none",
      smtputf8_enable: "no",
      biff: "no",
      smtpd_milters: milter,
      milter_default_action: "tempfail",
      milter_protocol: "6",
      milter_connect_timeout: "5s",
      milter_command_timeout: "10s",
      milter_content_timeout: "30s",
      ...extra,
    };
    writeFileSync(
      join(dir, "etc", "main.cf"),
      Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join("\n") + "\n",
    );
    writeFileSync(join(dir, "etc", "master.cf"), MASTER_CF(smtpPort));
    const sink = spawn("smtp-sink", [
      "-u",
      "postfix",
      "-d",
      join(dir, "sink", "%Y%m%d%H%M%S."),
      `127.0.0.1:${sinkPort}`,
      "100",
    ], {
      stdio: "ignore",
    });
    const instance = new PrivatePostfix(dir, smtpPort, sinkPort, sink);
    try {
      await run("postfix", ["-c", instance.configDir, "check"]);
      await run("postfix", ["-c", instance.configDir, "start"]);
      await waitForPort(smtpPort);
      await waitForPort(sinkPort);
    } catch (error) {
      await instance.stop();
      throw error;
    }
    live.add(instance);
    return instance;
  }

  /** Everything Postfix logged. */
  maillog(): string {
    const file = join(this.dir, "maillog");
    return existsSync(file) ? readFileSync(file, "utf8") : "";
  }

  /** Every message smtp-sink has received so far. */
  delivered(): Delivered[] {
    const sink = join(this.dir, "sink");
    return readdirSync(sink).sort().map((file) => parseDump(join(sink, file)));
  }

  /**
   * Waits until smtp-sink holds a whole message matching `predicate`: its
   * dump is written while the message arrives, so it counts only once
   * Postfix has logged the delivery finished (`<queue id>: removed`).
   */
  async waitForDelivery(predicate: (d: Delivered) => boolean, timeout = 20_000): Promise<Delivered> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const found = this.delivered().find(predicate);
      const id = found && /\(Postfix\) with E?SMTP id (\w+)/.exec(found.headers.map(([, v]) => v).join("\n"))?.[1];
      if (found && id && this.maillog().includes(`${id}: removed`)) return parseDump(found.file);
      if (Date.now() > deadline) {
        throw new Error(`not delivered within ${timeout} ms; maillog:\n${this.maillog().slice(-3000)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  /** The queue as `postqueue -j` reports it (queue_name, queue_id, sender, recipients). */
  async queue(): Promise<Record<string, unknown>[]> {
    const { stdout } = await run("postqueue", ["-c", this.configDir, "-j"]);
    return stdout.trim().split("\n").filter(Boolean).map((line) => JSON.parse(line));
  }

  /** Stops Postfix and smtp-sink and removes every file. */
  async stop(): Promise<void> {
    live.delete(this);
    await run("postfix", ["-c", this.configDir, "stop"]).catch(() =>
      run("postfix", ["-c", this.configDir, "abort"]).catch(() => {})
    );
    const pidFile = join(this.dir, "spool", "pid", "master.pid");
    if (existsSync(pidFile)) {
      const pid = Number(readFileSync(pidFile, "utf8").trim());
      for (let i = 0; i < 50 && alive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 100));
      if (alive(pid)) process.kill(pid, "SIGKILL");
    }
    this.#sink.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const live = new Set<PrivatePostfix>();

/** Stops every Postfix still running (for afterAll). */
export async function stopAllPostfix(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop()));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitForPort(port: number, timeout = 20_000): Promise<void> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1", () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Parses an smtp-sink dump: X-Mail-Args / X-Rcpt-Args records, then the message. */
function parseDump(file: string): Delivered {
  const text = readFileSync(file, "latin1").replace(/\r\n/g, "\n");
  const [head, ...rest] = text.split("\n\n");
  const headers: [string, string][] = [];
  for (const line of head.split("\n")) {
    if (/^[ \t]/.test(line) && headers.length) headers[headers.length - 1][1] += `\n${line}`;
    else {
      const colon = line.indexOf(":");
      if (colon > 0) headers.push([line.slice(0, colon), line.slice(colon + 1).trim()]);
    }
  }
  const value = (name: string): string[] => headers.filter(([n]) => n === name).map(([, v]) => v);
  const addr = (args: string): string => /<([^>]*)>/.exec(args)?.[1] ?? args;
  return {
    file,
    mailFrom: addr(value("X-Mail-Args")[0] ?? ""),
    rcptTo: value("X-Rcpt-Args").map(addr),
    rcptArgs: value("X-Rcpt-Args"),
    headers: headers.filter(([n]) => !/^X-(Client-Addr|Client-Proto|Helo-Args|Mail-Args|Rcpt-Args)$/.test(n)),
    body: rest.join("\n\n").replace(/\n$/, ""), // smtp-sink ends each dump with one more newline
  };
}
