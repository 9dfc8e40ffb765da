/**
 * `milter-test`: pushes one message through any milter as an MTA would, and
 * prints each stage's reply, the modifications requested and the verdict.
 * The exit code is the verdict, for scripts.
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import { isIPv4, isIPv6 } from "node:net";
import process from "node:process";
import { parseArgs } from "node:util";
import type { SockAddr } from "../convert.ts";
import { isFlag, isStep } from "../variants.ts";
import {
  type ClientOptions,
  type Macros,
  type MessageMacros,
  type MessageResult,
  MilterClient,
  parseSpec,
} from "./client.ts";
import { addresses, headerValue, type ParsedMessage, parseMessage } from "./eml.ts";
import { proxyCommand, replayCommand } from "./cli-sessions.ts";
import { concat, endsExchange, MilterClientError, type Modification, type Negotiated, type Reply } from "./protocol.ts";

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

const USAGE = `usage: milter-test [options] <socket> [message.eml ...]
       milter-test proxy --listen SOCKET --to SOCKET --record DIR
       milter-test replay FILE|DIR --to SOCKET [--update]

Pushes a message through the milter at <socket> (unix:/path, inet:port@host,
inet6:port@host) as an MTA would, and prints each stage's reply, the
modifications the milter requests, and the verdict. The message is read from
the file, or from standard input when it is "-" or absent. Several files go
through one milter connection, one SMTP session, with ABORT between them as
Postfix sends it (--quit-nc: each in an SMTP session of its own, QUIT_NC
between them).

  --client-host NAME     host name of the SMTP client (default localhost)
  --client-addr ADDR     its address: IPv4, IPv6, unix:/path or none (default 127.0.0.1)
  --client-port N        its port (default 0)
  --helo NAME            HELO/EHLO argument (default: the client host name)
  --from ADDR            envelope sender (default: the From: address, else <>)
  --rcpt ADDR            envelope recipient, repeatable (default: the To: and Cc: addresses)
  --macro [STAGE:]N=V    a macro, repeatable, over the defaults (Postfix's; see the
                         README); STAGE is connect (default), helo, envfrom,
                         envrcpt, data, header, eoh, body or eom; N is one
                         character or {name}; e.g. --macro eom:i=4Fq2
  --actions LIST         actions to offer, comma-separated Flag names (default: all)
  --steps LIST           protocol steps to offer, comma-separated Step names (default: all)
  --timeout SECONDS      wait at most this long for each stage's final reply,
                         progress frames included (default 10)
  --quit-nc              several messages: a new SMTP session for each (QUIT_NC)
  --json                 print one JSON object instead of text (an array for several)
  -h, --help             this text

Exit code: 0 accepted, 2 rejected, 3 tempfailed, 4 discarded, 5 quarantined
(several messages: the first verdict that is not accepted),
1 no verdict (cannot connect, timeout, protocol error, milter over the client's
limits, bad message), 64 bad usage.
`;

const STAGES = ["connect", "helo", "envfrom", "envrcpt", "data", "header", "eoh", "body", "eom"] as const;
type MacroStage = (typeof STAGES)[number];

/** Why a run ends without a verdict: what to print, the exit code, and whether the usage text follows. */
class CliError extends Error {
  override name = "CliError";
  readonly exit: number;
  readonly showUsage: boolean;

  constructor(message: string, exit: number = EXIT.error, showUsage: boolean = exit === EXIT.usage) {
    super(message);
    this.exit = exit;
    this.showUsage = showUsage;
  }
}

/** A bad command line (exit 64, with the usage text). */
function usage(message: string): CliError {
  return new CliError(message, EXIT.usage);
}

/** Parses a comma list of names, checking each with `valid`. */
function names<T extends string>(list: string, valid: (v: unknown) => v is T, what: string): T[] {
  const out = list.split(",").map((s) => s.trim()).filter(Boolean);
  for (const name of out) if (!valid(name)) throw usage(`unknown ${what} ${JSON.stringify(name)}`);
  return out as T[];
}

/** A macro name as libmilter knows them: one character, or a name in braces (`i`, `{client_addr}`). */
const MACRO_NAME = /^(?:[^\s{}:=]|\{[^\s{}]+\})$/u;

/**
 * `[stage:]name=value` → the stage and the macro.
 *
 * @throws {CliError} (usage) for a stage that is not one, or a name that is
 * not one character or `{name}`: `Eom:i=1` and `eom:=x` are errors, not
 * connect macros named `Eom:i` and `eom:`.
 */
export function parseMacro(spec: string): [MacroStage, string, string] {
  const equals = spec.indexOf("=");
  if (equals < 0) throw usage(`--macro ${JSON.stringify(spec)} is not [stage:]name=value`);
  const head = spec.slice(0, equals);
  const colon = head.startsWith("{") ? -1 : head.indexOf(":");
  const stage = colon < 0 ? "connect" : head.slice(0, colon);
  const name = head.slice(colon + 1);
  if (!(STAGES as readonly string[]).includes(stage)) {
    throw usage(`--macro ${JSON.stringify(spec)}: stage ${JSON.stringify(stage)} is not one of ${STAGES.join(", ")}`);
  }
  if (!MACRO_NAME.test(name)) {
    throw usage(`--macro ${JSON.stringify(spec)}: name ${JSON.stringify(name)} is not one character or {name}`);
  }
  return [stage as MacroStage, name, spec.slice(equals + 1)];
}

/**
 * The client address option as the connect stage sends it.
 *
 * @throws {CliError} (usage) for anything but an IPv4 or IPv6 address, `unix:/path` or `none`.
 */
export function parseClientAddr(value: string, port: number): SockAddr | null {
  if (value === "none") return null;
  if (/^unix:\/./.test(value)) return { family: "unix", path: value.slice(5) };
  if (isIPv4(value)) return { family: "inet", address: value, port };
  if (isIPv6(value)) return { family: "inet6", address: value, port };
  throw usage(`--client-addr ${JSON.stringify(value)} is not an IPv4 or IPv6 address, unix:/path or none`);
}

/**
 * `--timeout` in milliseconds.
 *
 * @throws {CliError} (usage) unless it is a plain positive decimal number of
 * seconds: `Infinity`, `1e309` and `0` are errors, not a wait without end.
 */
export function parseTimeout(value: string): number {
  const seconds = /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
  if (!(seconds > 0 && Number.isFinite(seconds * 1000))) {
    throw usage(`--timeout ${JSON.stringify(value)} is not a positive number of seconds`);
  }
  return seconds * 1000;
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

/** Format characters that reorder what a terminal shows (bidirectional marks, embeddings, isolates), DEL and C1 controls. */
const FORMAT_CHARS = "\\u007f-\\u009f\\u061c\\u200e\\u200f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069";
/** What a terminal may act on: those, and C0 controls. */
const UNSAFE = new RegExp(`[\\u0000-\\u001f${FORMAT_CHARS}]`, "gu");
/** What JSON.stringify leaves as it is (it escapes C0 controls in strings) and a terminal may act on. */
const UNSAFE_IN_JSON = new RegExp(`[${FORMAT_CHARS}]`, "gu");
const SHORT_ESCAPES: Readonly<Record<string, string>> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

/**
 * `text` safe to print on a terminal: control and bidirectional format
 * characters as escapes (`\n`, `\r`, `\t`, `\u{1b}`), so that what a milter
 * sends can neither drive the terminal nor start a line of its own.
 */
export function printable(text: string): string {
  return text.replace(UNSAFE, (c) => SHORT_ESCAPES[c] ?? `\\u{${c.codePointAt(0)!.toString(16)}}`);
}

/** `value` as indented JSON, with the characters {@linkcode printable} escapes and JSON.stringify does not as `\uXXXX`. */
function printableJson(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(
    UNSAFE_IN_JSON,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** One line per reply: `stage  action [text]` (the text as the report holds it: see {@linkcode shownReply}). */
export function formatReply(reply: Reply): string {
  if (reply.skipped) return "skipped (the milter asked not to see this stage)";
  return reply.action === "replycode" ? `replycode ${reply.text}` : reply.action;
}

/**
 * A reply as the MTA shows it: MTAs take a milter's reply text as a format
 * string, so `%%` in it reaches the SMTP client as `%`.
 */
export function shownReply(reply: Reply): Reply {
  return reply.text === undefined ? reply : { ...reply, text: reply.text.replaceAll("%%", "%") };
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
  /** Each stage's reply, its text as the MTA shows it ({@linkcode shownReply}). */
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
  return `${out.map(printable).join("\n")}\n`;
}

/**
 * The process's streams. A reader that goes away (`milter-test … | head`)
 * leaves the verdict as it was: EPIPE on stdout ends the output quietly.
 */
function processIO(): CliIO {
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") return;
    process.stderr.write(`milter-test: cannot write the report: ${error.message}\n`);
    process.exitCode = EXIT.error;
  });
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
  "quit-nc": { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

type Parsed = ReturnType<typeof parseArgs<{ args: string[]; allowPositionals: true; options: typeof OPTIONS }>>;

/** The macros given with `--macro`, by stage. */
type StageMacros = Record<MacroStage, Record<string, string>>;

/** What one run does, from its command line. */
interface Run {
  readonly socket: string;
  /** The message files, `"-"` for standard input, in the order they are sent. */
  readonly files: readonly string[];
  /** Between messages: a new SMTP session (QUIT_NC), rather than ABORT. */
  readonly quitNc: boolean;
  readonly client: ClientOptions;
  readonly host: string;
  readonly addr: SockAddr | null;
  readonly helo: string;
  readonly from: string | undefined;
  readonly rcpt: string[] | undefined;
  readonly macros: StageMacros;
  readonly json: boolean;
}

/** The envelope of the message: given, or taken from its headers. */
interface Envelope {
  readonly from: string;
  readonly rcpt: string[];
}

/**
 * Runs `milter-test` with `argv` (without the program name) and returns its
 * exit code; never throws.
 */
export async function main(argv: readonly string[], io: CliIO = processIO()): Promise<number> {
  // Subcommands (a socket so named is written unix:proxy or ./proxy).
  if (argv[0] === "proxy") return await proxyCommand(argv.slice(1), io);
  if (argv[0] === "replay") return await replayCommand(argv.slice(1), io);
  try {
    const run = parseCommandLine(argv);
    if (run === null) {
      io.stdout(USAGE);
      return EXIT.accepted;
    }
    const messages: Sent[] = [];
    for (const file of run.files) {
      const message = await loadMessage(file, io);
      messages.push({ file, message, envelope: envelopeOf(message, run) });
    }
    const reports = await exchange(await openClient(run), run, messages);
    if (reports.length === 1) io.stdout(run.json ? `${printableJson(reports[0])}\n` : formatText(reports[0]));
    else if (run.json) io.stdout(`${printableJson(reports)}\n`);
    else {io.stdout(
        reports.map((r, k) => `message ${k + 1} (${printable(run.files[k])}):\n${formatText(r)}`).join("\n"),
      );}
    return EXIT[reports.find((r) => r.verdict !== "accepted")?.verdict ?? "accepted"];
  } catch (error) {
    const failure = error instanceof CliError
      ? error
      : new CliError(error instanceof Error ? error.message : String(error));
    io.stderr(`milter-test: ${printable(failure.message)}\n${failure.showUsage ? `\n${USAGE}` : ""}`);
    return failure.exit;
  }
}

/**
 * The command line as a {@linkcode Run}, or `null` for `--help`.
 *
 * @throws {CliError} for bad usage.
 */
function parseCommandLine(argv: readonly string[]): Run | null {
  const { values: o, positionals } = parseOptions(argv);
  if (o.help) return null;
  if (positionals.length < 1) throw usage("expected <socket> [message.eml ...]");
  const [socket, ...given] = positionals;
  const files = given.length > 0 ? given : ["-"];
  if (files.filter((f) => f === "-").length > 1) throw usage("standard input (-) can be read once");
  checkSocket(socket);
  const port = Number(o["client-port"]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw usage("--client-port must be 0 to 65535");
  const host = o["client-host"]!;
  return {
    socket,
    files,
    quitNc: o["quit-nc"]!,
    client: clientOptions(o),
    host,
    addr: parseClientAddr(o["client-addr"]!, port),
    helo: o.helo ?? host,
    from: o.from,
    rcpt: o.rcpt,
    macros: parseMacros(o.macro ?? []),
    json: o.json!,
  };
}

/** The command line, parsed by node:util (its errors are bad usage). */
function parseOptions(argv: readonly string[]): Parsed {
  try {
    return parseArgs({ args: [...argv], allowPositionals: true, options: OPTIONS });
  } catch (error) {
    throw usage((error as Error).message);
  }
}

/** Checks the socket spec before anything else is read or opened. */
function checkSocket(socket: string): void {
  try {
    parseSpec(socket);
  } catch (error) {
    throw usage((error as Error).message);
  }
}

/** The client's options from `--timeout`, `--actions` and `--steps`. */
function clientOptions(o: Parsed["values"]): ClientOptions {
  return {
    timeout: parseTimeout(o.timeout!),
    ...(o.actions !== undefined && { actions: names(o.actions, isFlag, "action") }),
    ...(o.steps !== undefined && { steps: names(o.steps, isStep, "step") }),
  };
}

/** Each `--macro` in its stage, later ones overriding earlier ones. */
function parseMacros(specs: readonly string[]): StageMacros {
  const macros = Object.fromEntries(STAGES.map((stage) => [stage, {}])) as StageMacros;
  for (const spec of specs) {
    const [stage, name, value] = parseMacro(spec);
    macros[stage][name] = value;
  }
  return macros;
}

/**
 * Reads and parses the message file, or standard input for `"-"`.
 *
 * @throws {CliError} naming the file and why.
 */
async function loadMessage(file: string, io: CliIO): Promise<ParsedMessage> {
  try {
    return parseMessage(file === "-" ? await io.readStdin() : await readFile(file));
  } catch (error) {
    const where = file === "-" ? "from standard input" : file;
    throw new CliError(`cannot read the message ${where}: ${(error as Error).message}`);
  }
}

/**
 * The envelope: `--from` and `--rcpt`, else the From:, To: and Cc:
 * addresses (RFC 5322 address lists; the first From: address).
 *
 * @throws {CliError} (bad usage) when there is no recipient at all, or a
 * header the envelope is taken from is not an address list.
 */
function envelopeOf(message: ParsedMessage, run: Run): Envelope {
  const from = run.from ?? headerAddresses(message, ["From"], "--from")[0] ?? "<>";
  const rcpt = run.rcpt ?? headerAddresses(message, ["To", "Cc"], "--rcpt");
  if (rcpt.length === 0) {
    throw new CliError("no recipient: give --rcpt, or a To: or Cc: header with an address", EXIT.usage, false);
  }
  return { from, rcpt };
}

/**
 * The addresses of the header fields `names`.
 *
 * @throws {CliError} (bad usage) naming the field and the `option` that would do without it.
 */
function headerAddresses(message: ParsedMessage, names: readonly string[], option: string): string[] {
  try {
    return names.flatMap((name) => addresses(message.headers, name));
  } catch (error) {
    throw new CliError(`${(error as Error).message}: give ${option}`, EXIT.usage, false);
  }
}

/**
 * Connects to the milter and negotiates.
 *
 * @throws {CliError} saying why the milter cannot be reached.
 */
async function openClient(run: Run): Promise<MilterClient> {
  try {
    return await MilterClient.open(run.socket, run.client);
  } catch (error) {
    const { message } = error as Error;
    const connecting = error instanceof MilterClientError && error.kind === "connect";
    throw new CliError(connecting ? message : `cannot reach the milter at ${run.socket}: ${message}`);
  }
}

/** A message to send, from its file. */
interface Sent {
  readonly file: string;
  readonly message: ParsedMessage;
  readonly envelope: Envelope;
}

type Replies = { stage: string; reply: Reply }[];

/**
 * Runs the messages on `client`, one report each: one SMTP session with
 * ABORT between messages, or (`--quit-nc`) a session per message. A
 * session refused at connect or HELO ends the run there. The connection is
 * closed either way.
 */
async function exchange(client: MilterClient, run: Run, messages: readonly Sent[]): Promise<Report[]> {
  try {
    const reports: Report[] = [];
    let replies = await greet(client, run);
    for (const [k, sent] of messages.entries()) {
      const refused = replies.at(-1);
      if (refused !== undefined && endsExchange(refused.reply)) {
        reports.push(buildReport(run.socket, client.negotiated, replies, null));
        break;
      }
      const result = await message(client, run, sent);
      reports.push(buildReport(run.socket, client.negotiated, [...replies, ...result.replies], result));
      if (k === messages.length - 1) break;
      if (run.quitNc) {
        client.quitNc();
        replies = await greet(client, run);
      } else {
        client.abort();
        replies = [];
      }
    }
    client.quit();
    return reports;
  } finally {
    client.close();
  }
}

/** Connect and HELO, stopping where a reply ends the exchange. */
async function greet(client: MilterClient, run: Run): Promise<Replies> {
  const connect = await client.connect(run.host, run.addr, connectMacros(run));
  if (endsExchange(connect)) return [{ stage: "connect", reply: connect }];
  return [{ stage: "connect", reply: connect }, { stage: "helo", reply: await client.helo(run.helo, run.macros.helo) }];
}

/** One message, stopping where a reply ends it. */
function message(client: MilterClient, run: Run, { message, envelope }: Sent): Promise<MessageResult> {
  return client.message(
    {
      from: envelope.from,
      rcpt: envelope.rcpt,
      headers: sentHeaders(message, client.negotiated.steps.includes("HDR_LEADSPC")),
      body: message.body,
    },
    messageMacros(run, envelope.from),
  );
}

/** The message's header fields as the MTA sends them, one at a time. */
function* sentHeaders(message: ParsedMessage, leadingSpace: boolean): Generator<[Uint8Array, Uint8Array]> {
  for (const [name, value] of message.headers) yield [name, headerValue(value, leadingSpace)];
}

/** The host name milter-test gives itself, as Postfix gives its myhostname. */
const MY_HOSTNAME = "milter-test.localhost";

/**
 * The connect macros of Postfix 3.7's default `milter_connect_macros`
 * (`j {daemon_name} {daemon_addr} v _`), then the user's over them. Not
 * `{client_addr}` nor `{client_name}`: Postfix sends them only when
 * configured to.
 */
function connectMacros(run: Run): Macros {
  const address = run.addr && "address" in run.addr ? run.addr.address : null;
  return {
    j: MY_HOSTNAME,
    "{daemon_name}": MY_HOSTNAME,
    "{daemon_addr}": run.addr?.family === "inet6" ? "::1" : "127.0.0.1",
    v: "milter-test",
    _: `${run.host} [${address ?? "unknown"}]`,
    ...run.macros.connect,
  };
}

/** The domain of `<local@domain>`, or "" for `<>`. */
const domainOf = (address: string): string => address.replace(/^<|>$/g, "").replace(/^.*@/s, "");

/**
 * The message's macros as a stock Postfix 3.7 sends them (its default
 * `milter_*_macros`, without TLS or SASL, whose macros it sends only with a
 * value): `{mail_addr} {mail_host} {mail_mailer}` at MAIL FROM, `{rcpt_addr}
 * {rcpt_host} {rcpt_mailer}` at each RCPT TO, with the queue id `i` once a
 * recipient was accepted (Postfix opens the queue file then), and `i` at
 * DATA, each header, end of headers, each body chunk and end of message.
 * Then the user's, stage by stage.
 */
function messageMacros(run: Run, from: string): MessageMacros {
  const i = queueId();
  const envelope = (kind: "mail" | "rcpt", address: string): Macros => ({
    [`{${kind}_addr}`]: address.replace(/^<|>$/g, ""),
    ...(address !== "<>" && { [`{${kind}_host}`]: domainOf(address), [`{${kind}_mailer}`]: "smtp" }),
  });
  const queued = (stage: MacroStage): Macros => ({ i, ...run.macros[stage] });
  return {
    envfrom: { ...envelope("mail", from), ...run.macros.envfrom },
    envrcpt: (rcpt, accepted) => ({ ...(accepted > 0 && { i }), ...envelope("rcpt", rcpt), ...run.macros.envrcpt }),
    data: queued("data"),
    header: queued("header"),
    eoh: queued("eoh"),
    body: queued("body"),
    eom: queued("eom"),
  };
}

/** What the session learned, as the MTA would show and act on it. */
function buildReport(
  socket: string,
  negotiated: Negotiated,
  replies: readonly { stage: string; reply: Reply }[],
  result: MessageResult | null,
): Report {
  const modifications = result?.modifications ?? [];
  const decoder = new TextDecoder();
  return {
    socket,
    negotiated: {
      version: negotiated.version,
      actions: negotiated.actions,
      steps: negotiated.steps,
      macros: negotiated.macros,
    },
    replies: replies.map(({ stage, reply }) => ({ stage, reply: shownReply(reply) })),
    modifications: modifications.map((m) =>
      m.type === "replacebody" ? { type: "replacebody", text: decoder.decode(m.chunk) } : m
    ),
    body: result?.body ? decoder.decode(result.body) : null,
    verdict: verdict(replies[replies.length - 1].reply, modifications),
  };
}
