/** A small SMTP client for the Postfix tests: each command's full reply, multi-line replies joined. */

import { connect, type Socket } from "node:net";

export interface SmtpReply {
  readonly code: number;
  /** Every line, as sent (`"550-5.7.1 first"`, `"550 5.7.1 last"`). */
  readonly lines: string[];
}

export class SmtpClient {
  #socket: Socket;
  #buffer = "";
  #waiter: (() => void) | null = null;
  #closed = false;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setEncoding("utf8");
    socket.on("data", (text: string) => {
      this.#buffer += text;
      this.#waiter?.();
    });
    socket.on("close", () => {
      this.#closed = true;
      this.#waiter?.();
    });
    socket.on("error", () => {});
  }

  /** Connects and reads the greeting. */
  static async open(port: number, host = "127.0.0.1"): Promise<[SmtpClient, SmtpReply]> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(port, host, () => resolve(s));
      s.once("error", reject);
    });
    const client = new SmtpClient(socket);
    return [client, await client.reply()];
  }

  /** Reads one (possibly multi-line) reply. */
  async reply(timeout = 60_000): Promise<SmtpReply> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const match = /^((?:\d{3}-[^\r\n]*\r\n)*)(\d{3})(?: [^\r\n]*)?\r\n/.exec(this.#buffer);
      if (match) {
        this.#buffer = this.#buffer.slice(match[0].length);
        const lines = match[0].split("\r\n").filter(Boolean);
        return { code: Number(match[2]), lines };
      }
      if (this.#closed) throw new Error(`SMTP server closed the connection (pending: ${JSON.stringify(this.#buffer)})`);
      if (Date.now() > deadline) throw new Error(`no SMTP reply within ${timeout} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadline - Date.now());
        this.#waiter = () => {
          clearTimeout(timer);
          this.#waiter = null;
          resolve();
        };
      });
    }
  }

  /** Sends one command line and reads its reply. */
  async command(line: string): Promise<SmtpReply> {
    this.#socket.write(`${line}\r\n`);
    return await this.reply();
  }

  /** Sends DATA, then the message (dot-stuffed) and its end; returns both replies. */
  async data(message: string): Promise<[SmtpReply, SmtpReply | null]> {
    const go = await this.command("DATA");
    if (go.code !== 354) return [go, null];
    const body = message.replace(/\r?\n/g, "\r\n").replace(/^\./gm, "..");
    this.#socket.write(`${body}${body.endsWith("\r\n") ? "" : "\r\n"}.\r\n`);
    return [go, await this.reply()];
  }

  async quit(): Promise<void> {
    if (!this.#closed) {
      await this.command("QUIT").catch(() => {});
      this.#socket.destroy();
    }
  }
}

/** One whole SMTP transaction; every reply, and `null` for steps not reached. */
export interface Transaction {
  greeting: SmtpReply;
  ehlo: SmtpReply;
  mail: SmtpReply;
  rcpt: SmtpReply[];
  data: SmtpReply | null;
  end: SmtpReply | null;
}

/** Sends one message: EHLO, MAIL FROM, each RCPT TO, DATA, QUIT. */
export async function send(
  port: number,
  message: { from: string; to: string[]; content: string; helo?: string; mailArgs?: string; rcptArgs?: string },
): Promise<Transaction> {
  const [client, greeting] = await SmtpClient.open(port);
  try {
    const ehlo = await client.command(`EHLO ${message.helo ?? "client.test.example"}`);
    const mail = await client.command(`MAIL FROM:<${message.from}>${message.mailArgs ? ` ${message.mailArgs}` : ""}`);
    const rcpt: SmtpReply[] = [];
    for (const to of message.to) {
      rcpt.push(await client.command(`RCPT TO:<${to}>${message.rcptArgs ? ` ${message.rcptArgs}` : ""}`));
    }
    if (mail.code !== 250 || !rcpt.some((r) => r.code === 250)) {
      return { greeting, ehlo, mail, rcpt, data: null, end: null };
    }
    const [data, end] = await client.data(message.content);
    return { greeting, ehlo, mail, rcpt, data, end };
  } finally {
    await client.quit();
  }
}
