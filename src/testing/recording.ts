/**
 * Recorded milter sessions: the format `milter-test proxy` writes (one JSON
 * file per milter connection), loading it, and replaying its MTA side
 * against a filter to compare the filter's answers with the recorded ones.
 *
 * A recording is every frame of one milter connection in wire order, each
 * with its direction, its time, its command code and its bytes (base64),
 * plus a readable summary (the command's name and strings, a reply's action
 * and text, a modification), so that a recording reads well in a diff. The
 * bytes are what is replayed; the summaries are for people.
 *
 * @module
 */

import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Socket } from "node:net";
import { connectTarget, parseSocketSpec } from "../convert.ts";
import {
  ACTIONS,
  COMMAND_NAMES,
  concat,
  cstrings,
  decodeModification,
  decodeNegotiation,
  decodeReply,
  encodeFrame,
  FILTER_FRAME_NAMES,
  type Frame,
  FrameReader,
  MilterClientError,
  splitCStrings,
} from "./protocol.ts";

/** The name every recording carries in `format`. */
export const RECORDING_FORMAT = "milter-recording";
/** The version of the format this module writes and reads. */
export const RECORDING_VERSION = 1;

/** One frame of a recorded connection. */
export interface RecordedFrame {
  /** Who sent it: the MTA (a command) or the filter (a reply or a modification). */
  readonly from: "mta" | "filter";
  /** Milliseconds since the connection was accepted. */
  readonly t: number;
  /** The frame's command code, one character (`C` connect, `D` macros, `y` replycode, `h` addheader, …). */
  readonly code: string;
  /** What it is, for people: `connect`, `macros`, `header`, `eom`, `reply`, `addheader`, … */
  readonly name: string;
  /** Its payload, base64. */
  readonly data: string;
  /** A readable summary of the payload (strings, a reply, a modification); not replayed. */
  readonly summary?: unknown;
}

/** One recorded milter connection. */
export interface Recording {
  /** Always {@linkcode RECORDING_FORMAT}. */
  readonly format: typeof RECORDING_FORMAT;
  /** The format's version, {@linkcode RECORDING_VERSION}. */
  readonly version: number;
  /** When the connection was accepted (ISO 8601). */
  readonly started: string;
  /** How it ended: `quit`, `quit_nc` (then more sessions), `mta` / `filter` (that side closed), `limit` (size limit hit). */
  readonly end: "quit" | "mta" | "filter" | "limit" | "error";
  /** The frames in wire order. */
  readonly frames: RecordedFrame[];
}

/** What each frame is, by direction and letter. */
const NAMES: Readonly<Record<"mta" | "filter", Readonly<Record<string, string>>>> = {
  mta: COMMAND_NAMES,
  filter: { ...FILTER_FRAME_NAMES, ...ACTIONS },
};

/** Commands that never get a reply. */
const NO_REPLY_CODES = new Set(["D", "A", "Q", "K"]);

/** The NR_* step bit of each command that has one (`SMFIP_NR_*`). */
const NO_REPLY_STEP: Readonly<Record<string, number>> = {
  C: 0x1000,
  H: 0x2000,
  M: 0x4000,
  R: 0x8000,
  T: 0x10000,
  U: 0x20000,
  N: 0x40000,
  B: 0x80000,
  L: 0x80,
};

function base64(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function unbase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** A readable summary of a frame's payload, or `undefined` when it has nothing more to say. */
function summarize(from: "mta" | "filter", frame: Frame): unknown {
  try {
    if (from === "filter") {
      if (frame.code === "O") {
        const { version, actions, steps } = decodeNegotiation(frame.data);
        return { version, actions, steps };
      }
      const reply = decodeReply(frame);
      if (reply !== null) return reply.text;
      const modification = decodeModification(frame);
      if (modification === null || modification.type === "replacebody") return undefined;
      return modification;
    }
    if (frame.code === "O") return undefined;
    if (frame.code === "B") return new TextDecoder().decode(frame.data);
    if (frame.code === "D") {
      return { stage: String.fromCharCode(frame.data[0] ?? 0), macros: Object.fromEntries(macroPairs(frame.data)) };
    }
    const strings = splitCStrings(frame.data);
    return strings.length > 0 ? strings : undefined;
  } catch {
    return undefined;
  }
}

/** One frame as recorded. */
export function recordFrame(from: "mta" | "filter", frame: Frame, t: number): RecordedFrame {
  const summary = summarize(from, frame);
  const name = NAMES[from][frame.code] ?? `0x${frame.code.charCodeAt(0).toString(16)}`;
  return {
    from,
    t: Math.round(t * 1000) / 1000,
    code: frame.code,
    name,
    data: base64(frame.data),
    ...(summary === undefined ? {} : { summary }),
  };
}

/**
 * Reads a recording, checked.
 *
 * @throws {Error} naming the file when it is not a recording of this format's version.
 */
export function loadRecording(path: string): Recording {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new Error(`${path}: not a JSON file: ${(error as Error).message}`);
  }
  const r = data as Partial<Recording>;
  if (r?.format !== RECORDING_FORMAT) {
    throw new Error(`${path}: not a milter recording (no "format": "${RECORDING_FORMAT}")`);
  }
  if (r.version !== RECORDING_VERSION) {
    throw new Error(`${path}: recording version ${r.version}; this milter-test reads version ${RECORDING_VERSION}`);
  }
  if (!Array.isArray(r.frames)) throw new Error(`${path}: no "frames"`);
  for (const [i, f] of r.frames.entries()) {
    if ((f?.from !== "mta" && f?.from !== "filter") || typeof f.code !== "string" || typeof f.data !== "string") {
      throw new Error(`${path}: frame ${i} is not a recorded frame`);
    }
  }
  return r as Recording;
}

/** A recording and the file it came from. */
export interface RecordingFile {
  /** The file. */
  readonly path: string;
  /** What it holds. */
  readonly recording: Recording;
}

/** The recordings of `path`: the file itself, or every `*.json` file of a directory, sorted by name. */
export function loadRecordings(path: string): RecordingFile[] {
  const paths = statSync(path).isDirectory()
    ? readdirSync(path).filter((name) => name.endsWith(".json")).sort().map((name) => join(path, name))
    : [path];
  return paths.map((p) => ({ path: p, recording: loadRecording(p) }));
}

/** A recording as stable, readable JSON (two-space indent, one key order), as files hold it. */
export function recordingText(recording: Recording): string {
  return `${JSON.stringify(recording, null, 2)}\n`;
}

/** Writes a recording to `path`, as stable, readable JSON (two-space indent, one key order). */
export function saveRecording(path: string, recording: Recording): void {
  writeFileSync(path, recordingText(recording));
}

/** One command of a replay whose answer differs from the recording. */
export interface Difference {
  /** The command's position among the recording's MTA frames. */
  readonly index: number;
  /** The command's name (`envrcpt`, `eom`, …). */
  readonly command: string;
  /** The recorded answer: its frames, readable (modifications, then the reply). */
  readonly recorded: readonly string[];
  /** The replayed answer, the same way. */
  readonly replayed: readonly string[];
}

/** What {@linkcode replay} found. */
export interface ReplayResult {
  /** Whether every answer matched. */
  readonly matches: boolean;
  /** The commands whose answers differ, in order. */
  readonly differences: readonly Difference[];
  /** The recording as this replay would have recorded it (for `--update`). */
  readonly updated: Recording;
}

/** Options of {@linkcode replay}. */
export interface ReplayOptions {
  /**
   * Macros whose values legitimately differ between runs (queue ids, dates):
   * the replay sends each of them with a fresh value instead of the recorded
   * one (the same fresh value wherever the recording had the same one), as
   * another run of the MTA would, and masks the values as `{name}` in the
   * recorded and the replayed answers before comparing them.
   */
  readonly ignoreMacros?: readonly string[];
  /** Milliseconds to wait for each answer (default 10,000). */
  readonly timeout?: number;
}

/** The commands of a recording with the filter frames that answered each, as the proxy saw them. */
interface Exchange {
  readonly command: RecordedFrame;
  readonly index: number;
  readonly answer: RecordedFrame[];
}

/** The codes of the filter frames that end a command's answer: the negotiation reply, and every reply. */
const FINAL_CODES = new Set(["O", ...Object.keys(ACTIONS)]);

/** Whether a filter frame ends its command's answer. */
function isFinal(frame: { readonly code: string }): boolean {
  return FINAL_CODES.has(frame.code);
}

/** The NR_* steps of a negotiation reply frame (`O`), 0 when unreadable. */
function noReplySteps(data: Uint8Array): number {
  return data.length >= 12 ? new DataView(data.buffer, data.byteOffset, data.length).getUint32(8) : 0;
}

/** Whether command `code` gets a reply, under the negotiated `steps`. */
function expectsReply(code: string, steps: number): boolean {
  if (NO_REPLY_CODES.has(code)) return false;
  const nr = NO_REPLY_STEP[code];
  return nr === undefined || (steps & nr) === 0;
}

/** Groups a recording's frames into exchanges: each filter frame answers the oldest command still owed one. */
function exchanges(recording: Recording): Exchange[] {
  const out: Exchange[] = [];
  const owed: Exchange[] = [];
  let steps = 0;
  let index = 0;
  for (const frame of recording.frames) {
    if (frame.from === "mta") {
      const exchange = { command: frame, index: index++, answer: [] };
      out.push(exchange);
      if (expectsReply(frame.code, steps)) owed.push(exchange);
      continue;
    }
    const exchange = owed[0];
    if (exchange === undefined) continue; // nothing owed: a stray frame, kept in the file only
    exchange.answer.push(frame);
    if (frame.code === "O") steps = noReplySteps(unbase64(frame.data));
    if (isFinal(frame)) owed.shift();
  }
  return out;
}

/** An answer as compared: its frames' names and summaries, the ignored macros' values masked. */
function readable(answer: readonly RecordedFrame[], masks: readonly [string, string][]): string[] {
  return answer.map((f) => {
    let text = `${f.name}${f.summary === undefined ? "" : ` ${JSON.stringify(f.summary)}`}`;
    if (f.code === "b") text += ` ${f.data}`;
    for (const [value, name] of masks) if (value !== "") text = text.split(value).join(`{${name}}`);
    return text;
  });
}

/** The ignored macros of a replay: their fresh values, and the masks of both runs' values. */
interface Ignored {
  /** Each recorded value's fresh one, by macro name. */
  readonly fresh: Map<string, Map<string, string>>;
  /** [value, name] pairs masked in the recorded answers, and in the replayed ones: longest first. */
  readonly recorded: [string, string][];
  readonly replayed: [string, string][];
}

/** A fresh value for a macro's recorded one: random letters and digits of the same length (at least 6). */
function freshValue(value: string): string {
  let out = "";
  while (out.length < Math.max(value.length, 6)) out += Math.random().toString(36).slice(2).toUpperCase();
  return out.slice(0, Math.max(value.length, 6));
}

/** The macros named in `names` (`i`, `{i}`, `{mail_addr}`): their recorded values, fresh ones, and the masks. */
function ignoredMacros(recording: Recording, names: readonly string[]): Ignored {
  const keys = new Set(names.flatMap((n) => [n, n.replace(/^\{(.)\}$/, "$1"), n.length === 1 ? `{${n}}` : n]));
  const fresh = new Map<string, Map<string, string>>();
  for (const frame of recording.frames) {
    if (frame.from !== "mta" || frame.code !== "D") continue;
    for (const [name, value] of macroPairs(unbase64(frame.data))) {
      if (!keys.has(name) || value === "") continue;
      const values = fresh.get(name) ?? new Map<string, string>();
      fresh.set(name, values);
      if (!values.has(value)) values.set(value, freshValue(value));
    }
  }
  const pairs = (pick: (recorded: string, replayed: string) => string): [string, string][] =>
    [...fresh].flatMap(([name, values]) => [...values].map(([r, f]) => [pick(r, f), name] as [string, string]))
      .sort((a, b) => b[0].length - a[0].length);
  return { fresh, recorded: pairs((r) => r), replayed: pairs((_r, f) => f) };
}

/** The name and value pairs of a macros frame's payload (after its stage byte). */
function macroPairs(data: Uint8Array): [string, string][] {
  const strings = splitCStrings(data.subarray(1));
  return strings.flatMap((s, i) => i % 2 ? [] : [[s, strings[i + 1] ?? ""] as [string, string]]);
}

/** A macros frame's payload with the ignored macros' values replaced by their fresh ones. */
function withFreshMacros(data: Uint8Array, fresh: Ignored["fresh"]): Uint8Array {
  const pairs = macroPairs(data);
  if (!pairs.some(([name]) => fresh.has(name))) return data;
  const replaced = pairs.flatMap(([name, value]) => [name, fresh.get(name)?.get(value) ?? value]);
  return concat([data.subarray(0, 1), cstrings(...replaced)]);
}

/**
 * Plays the MTA side of `recording` against the filter at `spec` (in
 * `setconn`'s syntax): every MTA frame as recorded, byte for byte, waiting
 * for the filter's answer wherever the filter's own negotiation says one is
 * due, and compares each answer (modifications in order, then the reply)
 * with the recorded one.
 *
 * @throws {MilterClientError} when the filter cannot be reached, closes
 *   early, or does not answer in time.
 */
export async function replay(recording: Recording, spec: string, options: ReplayOptions = {}): Promise<ReplayResult> {
  const timeout = options.timeout ?? 10_000;
  const ignored = ignoredMacros(recording, options.ignoreMacros ?? []);
  const connection = await Connection.open(spec, timeout);
  const started = performance.now();
  const frames: RecordedFrame[] = [];
  const differences: Difference[] = [];
  let steps = 0;
  try {
    for (const { command, index, answer } of exchanges(recording)) {
      const recordedData = unbase64(command.data);
      const data = command.code === "D" ? withFreshMacros(recordedData, ignored.fresh) : recordedData;
      frames.push(recordFrame("mta", { code: command.code, data }, performance.now() - started));
      connection.send(encodeFrame(command.code, data));
      if (command.code === "Q") break;
      if (!expectsReply(command.code, steps)) continue;
      const got: RecordedFrame[] = [];
      for (;;) {
        const frame = await connection.next(`${command.name} (command ${index})`);
        const recorded = recordFrame("filter", frame, performance.now() - started);
        got.push(recorded);
        frames.push(recorded);
        if (frame.code === "O") steps = noReplySteps(frame.data);
        if (isFinal(frame)) break;
      }
      const before = readable(answer, ignored.recorded), after = readable(got, ignored.replayed);
      if (JSON.stringify(before) !== JSON.stringify(after)) {
        differences.push({ index, command: command.name, recorded: before, replayed: after });
      }
    }
  } finally {
    connection.close();
  }
  return {
    matches: differences.length === 0,
    differences,
    updated: { ...recording, started: new Date().toISOString(), frames },
  };
}

/** A difference as lines for people: the command, then `- recorded` and `+ replayed` frames. */
export function formatDifference(d: Difference): string {
  const lines = [`${d.command} (command ${d.index}):`];
  for (const line of d.recorded) if (!d.replayed.includes(line)) lines.push(`  - ${line}`);
  for (const line of d.replayed) if (!d.recorded.includes(line)) lines.push(`  + ${line}`);
  if (lines.length === 1) {
    lines.push(...d.recorded.map((l) => `  - ${l}`), ...d.replayed.map((l) => `  + ${l}`)); // same frames, another order
  }
  return lines.join("\n");
}

/** A socket to a filter, read frame by frame. */
class Connection {
  readonly #socket: Socket;
  readonly #reader = new FrameReader();
  #frames: Frame[] = [];
  #waiter: (() => void) | null = null;
  #ended: Error | null = null;
  readonly #timeout: number;

  private constructor(socket: Socket, timeout: number) {
    this.#socket = socket;
    this.#timeout = timeout;
    socket.on("data", (chunk: Uint8Array) => {
      try {
        this.#frames.push(...this.#reader.push(chunk));
      } catch (error) {
        this.#ended = error as Error;
      }
      this.#waiter?.();
    });
    const end = (why: string): void => {
      this.#ended ??= new MilterClientError("closed", why);
      this.#waiter?.();
    };
    socket.on("close", () => end("the milter closed the connection"));
    socket.on("error", (error) => end(`the connection failed: ${error.message}`));
  }

  static open(spec: string, timeout: number): Promise<Connection> {
    const parsed = parseSocketSpec(spec);
    if (typeof parsed === "string") {
      return Promise.reject(new MilterClientError("connect", `${JSON.stringify(spec)} is not a socket spec`));
    }
    const target = connectTarget(parsed);
    return new Promise((resolve, reject) => {
      const socket = "path" in target
        ? new Socket().connect(target.path)
        : new Socket().connect(target.port, target.host);
      socket.once("connect", () => resolve(new Connection(socket, timeout)));
      socket.once(
        "error",
        (error) =>
          reject(
            new MilterClientError("connect", `cannot reach the milter at ${spec}: ${error.message}`, { cause: error }),
          ),
      );
    });
  }

  send(bytes: Uint8Array): void {
    this.#socket.write(bytes);
  }

  /** The next frame from the filter. */
  async next(what: string): Promise<Frame> {
    const deadline = Date.now() + this.#timeout;
    while (this.#frames.length === 0) {
      if (this.#ended) throw this.#ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new MilterClientError("timeout", `no answer to ${what} within ${this.#timeout} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#waiter = null;
    }
    return this.#frames.shift()!;
  }

  close(): void {
    this.#socket.destroy();
  }
}
