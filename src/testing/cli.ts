/**
 * `milter-test`: pushes one message through any milter as an MTA would, and
 * prints each stage's reply, the modifications requested and the verdict.
 * The exit code is the verdict, for scripts.
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import process from "node:process";
import { parseArgs } from "node:util";
import type { SockAddr } from "../convert.ts";
import { type Flag, isFlag, isStep, type Step } from "../variants.ts";
import { type Macros, type MessageResult, MilterClient } from "./client.ts";
import { addresses, headerValue, parseMessage } from "./eml.ts";
import { concat, type Modification, type Negotiated, type Reply } from "./protocol.ts";

/** The exit codes: the verdict, or why there is none. */
export const EXIT = {
  accepted: 0,
  error: 1,
  rejected: 2,
  tempfailed: 3,
  discarded: 4,
  quarantined: 5,
  usage: 64,
} as const;

/** What happened to the message, as the MTA would act on it. */
export type Verdict = "accepted" | "rejected" | "tempfailed" | "discarded" | "quarantined";

/** Where the CLI reads and writes; the process's streams by default. */
export interface CliIO {
  stdout(text: string): void;
  stderr(text: string): void;
  readStdin(): Promise<Uint8Array>;
}

const USAGE = `usage: milter-test [options] <socket> [message.eml]

Pushes a message through the milter at <socket> (unix:/path, inet:port@host,
inet6:port@host) as an MTA would, and prints each stage's reply, the
modifications the milter requests, and the verdict. The message is read from
the file, or from standard input when it is "-" or absent.

  --client-host NAME     host name of the SMTP client (default localhost)
  --client-addr ADDR     its address: IPv4, IPv6, unix:/path or none (default 127.0.0.1)
  --client-port N        its port (default 0)
  --helo NAME            HELO/EHLO argument (default: the client host name)
  --from ADDR            envelope sender (default: the From: address, else <>)
  --rcpt ADDR            envelope recipient, repeatable (default: the To: and Cc: addresses)
  --macro [STAGE:]N=V    a macro, repeatable; STAGE is connect (default), helo,
                         envfrom, envrcpt, data, eoh or eom; e.g. --macro eom:i=4Fq2
  --actions LIST         actions to offer, comma-separated Flag names (default: all)
  --steps LIST           protocol steps to offer, comma-separated Step names (default: all)
  --timeout SECONDS      wait at most this long for each reply (default 10)
  --json                 print one JSON object instead of text
  -h, --help             this text

Exit code: 0 accepted, 2 rejected, 3 tempfailed, 4 discarded, 5 quarantined,
1 no verdict (cannot connect, protocol error, bad message), 64 bad usage.
`;

const STAGES = ["connect", "helo", "envfrom", "envrcpt", "data", "eoh", "eom"] as const;
type MacroStage = (typeof STAGES)[number];

class UsageError extends Error {}

/** Parses a comma list of names, checking each with `valid`. */
function names<T extends string>(list: string, valid: (v: unknown) => v is T, what: string): T[] {
  const out = list.split(",").map((s) => s.trim()).filter(Boolean);
  for (const name of out) if (!valid(name)) throw new UsageError(`unknown ${what} ${JSON.stringify(name)}`);
  return out as T[];
}

/** `[stage:]name=value` → the stage and the macro. */
export function parseMacro(spec: string): [MacroStage, string, string] {
  const match = spec.match(/^(?:([a-z]+):)?([^=]+)=(.*)$/s);
  if (!match) throw new UsageError(`--macro ${JSON.stringify(spec)} is not [stage:]name=value`);
  const stage = (match[1] ?? "connect") as MacroStage;
  if (!STAGES.includes(stage)) {
    throw new UsageError(`--macro stage ${JSON.stringify(match[1])} is not one of ${STAGES}`);
  }
  return [stage, match[2], match[3]];
}

/** The client address option as the connect stage sends it. */
export function parseClientAddr(value: string, port: number): SockAddr | null {
  if (value === "none") return null;
  if (value.startsWith("unix:")) return { family: "unix", path: value.slice(5) };
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(value)) return { family: "inet", address: value, port };
  if (value.includes(":")) return { family: "inet6", address: value, port };
  throw new UsageError(`--client-addr ${JSON.stringify(value)} is not an IPv4 or IPv6 address, unix:/path or none`);
}

/** The verdict of the last reply, as an MTA acts on it. */
export function verdict(last: Reply, modifications: readonly Modification[]): Verdict {
  switch (last.action) {
    case "reject":
      return "rejected";
    case "tempfail":
    case "connfail":
    case "shutdown":
      return "tempfailed";
    case "discard":
      return "discarded";
    case "replycode":
      return (last.smtpCode ?? 500) >= 500 ? "rejected" : "tempfailed";
    default:
      return modifications.some((m) => m.type === "quarantine") ? "quarantined" : "accepted";
  }
}

/** One line per reply: `stage  action [text]`. */
export function formatReply(reply: Reply): string {
  if (reply.skipped) return "skipped (the milter asked not to see this stage)";
  return reply.action === "replycode" ? `replycode ${reply.text}` : reply.action;
}

/** `Name: value`, without doubling the space a milter using HDR_LEADSPC already gives. */
function field(name: string, value: string): string {
  return /^[ \t]/.test(value) ? `${name}:${value}` : `${name}: ${value}`;
}

/** One line per modification. */
export function formatModification(m: Modification): string {
  switch (m.type) {
    case "addheader":
      return `addheader ${field(m.name, m.value)}`;
    case "insheader":
      return `insheader at ${m.index}: ${field(m.name, m.value)}`;
    case "chgheader":
      return m.value === ""
        ? `chgheader delete ${m.name}[${m.index}]`
        : `chgheader ${field(`${m.name}[${m.index}]`, m.value)}`;
    case "addrcpt":
      return `addrcpt ${m.rcpt}`;
    case "addrcpt_par":
      return `addrcpt_par ${m.rcpt}${m.args ? ` ${m.args}` : ""}`;
    case "delrcpt":
      return `delrcpt ${m.rcpt}`;
    case "chgfrom":
      return `chgfrom ${m.from}${m.args ? ` ${m.args}` : ""}`;
    case "replacebody":
      return `replacebody ${m.chunk.length} bytes`;
    case "quarantine":
      return `quarantine ${m.reason}`;
    case "progress":
      return "progress";
  }
}

/** Everything one run learned, as `--json` prints it. */
export interface Report {
  readonly socket: string;
  readonly negotiated: Pick<Negotiated, "version" | "actions" | "steps" | "macros">;
  readonly replies: { readonly stage: string; readonly reply: Reply }[];
  readonly modifications: (Modification | { type: "replacebody"; text: string })[];
  readonly body: string | null;
  readonly verdict: Verdict;
}

function formatText(report: Report): string {
  const out = [
    `milter ${report.socket}: protocol ${report.negotiated.version}`,
    `  actions ${report.negotiated.actions.join(" ") || "(none)"}`,
    `  steps   ${report.negotiated.steps.join(" ") || "(none)"}`,
  ];
  // Consecutive identical replies of one stage (headers, body chunks) on one line.
  for (let i = 0; i < report.replies.length;) {
    let j = i + 1;
    const same = (k: number): boolean =>
      report.replies[k].stage === report.replies[i].stage &&
      JSON.stringify(report.replies[k].reply) === JSON.stringify(report.replies[i].reply);
    while (j < report.replies.length && same(j)) j++;
    const times = j - i > 1 ? ` (×${j - i})` : "";
    out.push(`${report.replies[i].stage.padEnd(9)}${formatReply(report.replies[i].reply)}${times}`);
    i = j;
  }
  if (report.modifications.length > 0) {
    out.push("modifications:");
    for (const m of report.modifications) {
      out.push(`  ${"text" in m ? `replacebody ${JSON.stringify(m.text)}` : formatModification(m)}`);
    }
  }
  out.push(`verdict: ${report.verdict}`);
  return `${out.join("\n")}\n`;
}

function processIO(): CliIO {
  return {
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    readStdin: async () => {
      const chunks: Uint8Array[] = [];
      for await (const chunk of process.stdin) chunks.push(chunk as Uint8Array);
      return concat(chunks);
    },
  };
}

/** A queue id for the `i` macro, as MTAs give one per message. */
function queueId(): string {
  return Math.floor(Math.random() * 0xffffffffff).toString(16).toUpperCase().padStart(10, "0");
}

/** The command-line options, for node:util's parseArgs (the same under Deno and Bun). */
const OPTIONS = {
  "client-host": { type: "string", default: "localhost" },
  "client-addr": { type: "string", default: "127.0.0.1" },
  "client-port": { type: "string", default: "0" },
  helo: { type: "string" },
  from: { type: "string" },
  rcpt: { type: "string", multiple: true },
  macro: { type: "string", multiple: true },
  actions: { type: "string" },
  steps: { type: "string" },
  timeout: { type: "string", default: "10" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

type Parsed = ReturnType<typeof parseArgs<{ args: string[]; allowPositionals: true; options: typeof OPTIONS }>>;

/** The command line, parsed. */
function parseOptions(argv: readonly string[]): Parsed {
  return parseArgs({ args: [...argv], allowPositionals: true, options: OPTIONS });
}

/**
 * Runs `milter-test` with `argv` (without the program name) and returns its
 * exit code; never throws.
 */
export async function main(argv: readonly string[], io: CliIO = processIO()): Promise<number> {
  let options: Parsed;
  try {
    options = parseOptions(argv);
  } catch (error) {
    io.stderr(`milter-test: ${(error as Error).message}\n\n${USAGE}`);
    return EXIT.usage;
  }
  const { values: o, positionals } = options;
  if (o.help) {
    io.stdout(USAGE);
    return EXIT.accepted;
  }
  let socket: string, file: string, port: number, timeout: number, addr: SockAddr | null;
  let actions: Flag[] | undefined, steps: Step[] | undefined;
  const macros: Record<MacroStage, Record<string, string>> = {
    connect: {},
    helo: {},
    envfrom: {},
    envrcpt: {},
    data: {},
    eoh: {},
    eom: {},
  };
  try {
    if (positionals.length < 1 || positionals.length > 2) throw new UsageError("expected <socket> [message.eml]");
    [socket, file = "-"] = positionals;
    port = Number(o["client-port"]);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError("--client-port must be 0 to 65535");
    timeout = Number(o.timeout);
    if (!(timeout > 0)) throw new UsageError("--timeout must be a positive number of seconds");
    addr = parseClientAddr(o["client-addr"]!, port);
    actions = o.actions === undefined ? undefined : names(o.actions, isFlag, "action");
    steps = o.steps === undefined ? undefined : names(o.steps, isStep, "step");
    for (const spec of o.macro ?? []) {
      const [stage, name, value] = parseMacro(spec);
      macros[stage][name] = value;
    }
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    io.stderr(`milter-test: ${error.message}\n\n${USAGE}`);
    return EXIT.usage;
  }

  let message;
  try {
    message = parseMessage(file === "-" ? await io.readStdin() : new Uint8Array(await readFile(file)));
  } catch (error) {
    io.stderr(
      `milter-test: cannot read the message ${file === "-" ? "from standard input" : file}: ${
        (error as Error).message
      }\n`,
    );
    return EXIT.error;
  }
  const header = (name: string): string[] =>
    message.headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);
  const from = o.from ?? header("from").flatMap(addresses)[0] ?? "<>";
  const rcpt = o.rcpt ?? [...header("to"), ...header("cc")].flatMap(addresses);
  if (rcpt.length === 0) {
    io.stderr("milter-test: no recipient: give --rcpt, or a To: or Cc: header with an address\n");
    return EXIT.usage;
  }
  const host = o["client-host"]!;
  const id = queueId();
  // What Postfix sends by default, then the user's macros over it.
  const withDefaults = (stage: MacroStage, defaults: Macros): Macros => ({ ...defaults, ...macros[stage] });

  let client: MilterClient;
  try {
    client = await MilterClient.open(socket, {
      timeout: timeout * 1000,
      ...(actions && { actions }),
      ...(steps && { steps }),
    });
  } catch (error) {
    io.stderr(`milter-test: cannot reach the milter at ${socket}: ${(error as Error).message}\n`);
    return EXIT.error;
  }
  try {
    const negotiated = client.negotiated;
    const replies: { stage: string; reply: Reply }[] = [];
    const ends = (reply: Reply): boolean => !["continue", "noreply", "skip", "accept"].includes(reply.action);
    let result: MessageResult | null = null;
    const connect = await client.connect(
      host,
      addr,
      withDefaults("connect", {
        j: "milter-test.localhost",
        "{daemon_name}": "milter-test",
        _: `${host} [${addr && "address" in addr ? addr.address : "unknown"}]`,
        ...(addr && "address" in addr && { "{client_addr}": addr.address, "{client_name}": host }),
      }),
    );
    replies.push({ stage: "connect", reply: connect });
    if (!ends(connect)) {
      const helo = await client.helo(o.helo ?? host, withDefaults("helo", {}));
      replies.push({ stage: "helo", reply: helo });
      if (!ends(helo)) {
        result = await client.message(
          {
            from,
            rcpt,
            headers: message.headers.map(([n, v]) => [n, headerValue(v, negotiated.steps.includes("HDR_LEADSPC"))]),
            body: message.body,
          },
          {
            envfrom: withDefaults("envfrom", { i: id, "{mail_addr}": from.replace(/^<|>$/g, "") }),
            envrcpt: withDefaults("envrcpt", {}),
            data: withDefaults("data", {}),
            eoh: withDefaults("eoh", {}),
            eom: withDefaults("eom", { i: id }),
          },
        );
        replies.push(...result.replies);
      }
    }
    client.quit();
    const modifications = result?.modifications ?? [];
    const report: Report = {
      socket,
      negotiated: {
        version: negotiated.version,
        actions: negotiated.actions,
        steps: negotiated.steps,
        macros: negotiated.macros,
      },
      replies,
      modifications: modifications.map((m) =>
        m.type === "replacebody" ? { type: "replacebody", text: new TextDecoder().decode(m.chunk) } : m
      ),
      body: result?.body ? new TextDecoder().decode(result.body) : null,
      verdict: verdict(replies[replies.length - 1].reply, modifications),
    };
    io.stdout(o.json ? `${JSON.stringify(report, null, 2)}\n` : formatText(report));
    return EXIT[report.verdict];
  } catch (error) {
    client.close();
    io.stderr(`milter-test: ${(error as Error).message}\n`);
    return EXIT.error;
  }
}
