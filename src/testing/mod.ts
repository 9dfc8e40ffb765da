/**
 * The MTA side of the milter protocol, for testing filters without an MTA:
 * {@linkcode MilterClient} drives any milter (this package's or another) over
 * its socket and reports replies and requested modifications.
 *
 * ```ts
 * import { MilterClient } from "@milterjs/milter/testing";
 *
 * const client = await MilterClient.open("inet:8890@127.0.0.1");
 * await client.connect("mx.example.org", { family: "inet", address: "192.0.2.1", port: 25 });
 * await client.helo("mx.example.org");
 * const result = await client.message({
 *   from: "<a@example.org>", rcpt: ["<b@example.net>"],
 *   headers: [["Subject", "hello"]], body: "Hi!\r\n",
 * });
 * console.log(result.reply, result.modifications);
 * client.quit();
 * ```
 *
 * Sessions recorded from a real MTA by `milter-test proxy` (or
 * {@linkcode startProxy}) replay as golden files:
 *
 * ```ts
 * import { formatDifference, loadRecording, replay } from "@milterjs/milter/testing";
 *
 * const result = await replay(loadRecording("test/sessions/one.json"), "inet:8890@127.0.0.1");
 * if (!result.matches) throw new Error(result.differences.map(formatDifference).join("\n"));
 * ```
 *
 * @module
 */

export {
  type ClientOptions,
  type EomResult,
  type Macros,
  type MessageInput,
  type MessageMacros,
  type MessageResult,
  MilterClient,
  parseSpec,
} from "./client.ts";
export type { ConnectTarget } from "../convert.ts";
export {
  type Difference,
  formatDifference,
  loadRecording,
  loadRecordings,
  type RecordedFrame,
  type Recording,
  RECORDING_FORMAT,
  RECORDING_VERSION,
  type RecordingFile,
  replay,
  type ReplayOptions,
  type ReplayResult,
  saveRecording,
} from "./recording.ts";
export { type Proxy, type ProxyOptions, startProxy } from "./proxy.ts";
export {
  type Action,
  type ClientErrorKind,
  endsExchange,
  MAX_FRAME,
  MilterClientError,
  type Modification,
  type Negotiated,
  type Reply,
} from "./protocol.ts";
