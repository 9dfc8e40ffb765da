/**
 * `milter-test proxy` and `milter-test replay`: record real MTA sessions,
 * and play them back against a filter as tests.
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { startProxy } from "./proxy.ts";
import { formatDifference, loadRecordings, replay, saveRecording } from "./recording.ts";

/** Where a subcommand writes. */
export interface SessionsIO {
  stdout(text: string): void;
  stderr(text: string): void;
}

/** The exit codes of replay: every answer the same, some differ, or no comparison (a connection or file error). */
export const REPLAY_EXIT = { same: 0, differs: 1, error: 2, usage: 64 } as const;

export const PROXY_USAGE = `usage: milter-test proxy --listen SOCKET --to SOCKET --record DIR [--max-bytes N]

Listens on --listen where the MTA connects, forwards every frame both ways
unchanged to the filter at --to, and writes one JSON file per milter
connection into DIR when it ends. Runs until SIGINT or SIGTERM.
`;

export const REPLAY_USAGE =
  `usage: milter-test replay FILE|DIR --to SOCKET [--update] [--ignore-macro NAME]... [--timeout SECONDS]

Plays the MTA side of each recorded connection against the filter at --to and
compares its answers (modifications, then the reply) with the recording.
--update rewrites each recording from the new answers. --ignore-macro masks a
macro's recorded values (a queue id, a date) in the answers before comparing.
Exit code: 0 every answer the same, 1 some differ (printed), 2 a recording or
the filter could not be read, 64 bad usage.
`;

/** Runs `milter-test proxy`; resolves with its exit code once stopped by a signal. */
export async function proxyCommand(argv: readonly string[], io: SessionsIO): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        listen: { type: "string" },
        to: { type: "string" },
        record: { type: "string" },
        "max-bytes": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (error) {
    io.stderr(`milter-test proxy: ${(error as Error).message}\n\n${PROXY_USAGE}`);
    return REPLAY_EXIT.usage;
  }
  if (values.help) {
    io.stdout(PROXY_USAGE);
    return 0;
  }
  const maxBytes = values["max-bytes"] === undefined ? undefined : Number(values["max-bytes"]);
  if (!values.listen || !values.to || !values.record || (maxBytes !== undefined && !(maxBytes >= 1))) {
    io.stderr(`milter-test proxy: --listen, --to and --record are required (--max-bytes at least 1)\n\n${PROXY_USAGE}`);
    return REPLAY_EXIT.usage;
  }
  let proxy;
  try {
    proxy = await startProxy({
      listen: values.listen,
      to: values.to,
      record: values.record,
      maxBytes,
      onRecording: (path) => io.stdout(`recorded ${path}\n`),
      onNote: (line) => io.stderr(`${line}\n`),
    });
  } catch (error) {
    io.stderr(`milter-test proxy: ${(error as Error).message}\n`);
    return REPLAY_EXIT.error;
  }
  io.stdout(`milter-test proxy: ${values.listen} -> ${values.to}, recording into ${values.record}\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  await proxy.close();
  return 0;
}

/** Runs `milter-test replay`; resolves with its exit code. */
export async function replayCommand(argv: readonly string[], io: SessionsIO): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        to: { type: "string" },
        update: { type: "boolean", default: false },
        "ignore-macro": { type: "string", multiple: true },
        timeout: { type: "string", default: "10" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    io.stderr(`milter-test replay: ${(error as Error).message}\n\n${REPLAY_USAGE}`);
    return REPLAY_EXIT.usage;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.stdout(REPLAY_USAGE);
    return 0;
  }
  const timeout = Number(values.timeout);
  if (positionals.length !== 1 || !values.to || !(timeout > 0)) {
    io.stderr(`milter-test replay: expected one FILE or DIR, and --to (--timeout above 0)\n\n${REPLAY_USAGE}`);
    return REPLAY_EXIT.usage;
  }
  let recordings;
  try {
    recordings = loadRecordings(positionals[0]);
  } catch (error) {
    io.stderr(`milter-test replay: ${(error as Error).message}\n`);
    return REPLAY_EXIT.error;
  }
  let differ = 0;
  for (const { path, recording } of recordings) {
    let result;
    try {
      result = await replay(recording, values.to, {
        ignoreMacros: values["ignore-macro"] ?? [],
        timeout: timeout * 1000,
      });
    } catch (error) {
      io.stderr(`milter-test replay: ${path}: ${(error as Error).message}\n`);
      return REPLAY_EXIT.error;
    }
    if (result.matches) io.stdout(`same ${path}\n`);
    else {
      differ++;
      io.stdout(`differs ${path}\n${result.differences.map(formatDifference).join("\n")}\n`);
    }
    if (values.update && !result.matches) {
      saveRecording(path, result.updated);
      io.stdout(`updated ${path}\n`);
    }
  }
  io.stdout(`${recordings.length} recording(s), ${differ} with differences\n`);
  return differ > 0 && !values.update ? REPLAY_EXIT.differs : REPLAY_EXIT.same;
}
