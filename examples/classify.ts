/**
 * Content classification by an HTTP service: each message (headers and body,
 * at most MAX_MESSAGE_BYTES of it) is collected in private data and, at end
 * of message, POSTed as `message/rfc822` to CLASSIFIER_URL, which answers
 * `{ "verdict": "ham" | "spam" | "quarantine", "score": number }`. Ham gets
 * an `X-Spam-Score` header, spam is refused with 550, and quarantine puts the
 * message in the MTA's hold queue with the header. The `eom` callback awaits
 * the service: only this connection waits for it.
 *
 *   CLASSIFIER_URL=http://127.0.0.1:8000/classify npx tsx examples/classify.ts
 *   deno run --allow-ffi --allow-env --allow-net examples/classify.ts      (or: bun examples/classify.ts)
 *
 * CLASSIFIER_TIMEOUT: milliseconds for the whole request (default 5000, at
 * most 7000: below the callback timeout). MAX_MESSAGE_BYTES: how much of a
 * message is sent (default 1 MiB; the rest is cut off, as spam scanners do).
 * Both are whole numbers; anything else stops the filter at start (exit code
 * 78). The service's answer is read up to MAX_ANSWER_BYTES (64 KiB): a
 * longer one, or one that never ends, is an error like any other bad answer
 * (451), and costs no more memory than that. MILTER_SOCKET sets the socket
 * (default inet:8890@127.0.0.1). Postfix, in main.cf:
 *
 *   smtpd_milters = inet:127.0.0.1:8890
 *   milter_default_action = tempfail
 */

import process from "node:process";
import * as Milter from "../mod.ts";
import { positiveInteger } from "./settings.ts";

const CLASSIFIER_URL = process.env.CLASSIFIER_URL ?? "http://127.0.0.1:8000/classify";
const CALLBACK_TIMEOUT = 8; // seconds
/** The bound of one request: below main's callbackTimeout, so that the filter answers, not the deadline. */
const CLASSIFIER_TIMEOUT = positiveInteger("CLASSIFIER_TIMEOUT", 5000, CALLBACK_TIMEOUT * 1000 - 1000);
const MAX_MESSAGE_BYTES = positiveInteger("MAX_MESSAGE_BYTES", 1024 * 1024);
/** The most of the service's answer that is read: a verdict is a few dozen bytes. */
const MAX_ANSWER_BYTES = 64 * 1024;

/** The message collected so far. */
interface Collected {
  parts: Uint8Array<ArrayBuffer>[];
  bytes: number;
}

/** What the service answers. */
interface Verdict {
  verdict: "ham" | "spam" | "quarantine";
  score: number;
}

/** Keeps `chunk`, or as much of it as MAX_MESSAGE_BYTES leaves room for. */
function collect(message: Collected, chunk: Uint8Array): void {
  const room = MAX_MESSAGE_BYTES - message.bytes;
  if (room <= 0) return;
  const kept = chunk.slice(0, room); // a copy on its own ArrayBuffer, as Blob wants
  message.parts.push(kept);
  message.bytes += kept.length;
}

/**
 * The body of the service's answer as text. Throws once it passes
 * MAX_ANSWER_BYTES, having read no more than that (and the socket's buffer).
 */
async function readAnswer(response: Response): Promise<string> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const parts: Uint8Array<ArrayBuffer>[] = [];
  let bytes = 0;
  for (let read = await reader.read(); !read.done; read = await reader.read()) {
    bytes += read.value.length;
    if (bytes > MAX_ANSWER_BYTES) {
      await reader.cancel(); // closes the connection: the rest is never read
      throw new Error(`${CLASSIFIER_URL} answered more than ${MAX_ANSWER_BYTES} bytes`);
    }
    parts.push(read.value);
  }
  return await new Blob(parts).text();
}

/** Asks the service. Throws on an HTTP error, a timeout, or an answer that is not a verdict. */
async function classify(message: Collected): Promise<Verdict> {
  const response = await fetch(CLASSIFIER_URL, {
    method: "POST",
    headers: { "content-type": "message/rfc822" },
    body: new Blob(message.parts),
    signal: AbortSignal.timeout(CLASSIFIER_TIMEOUT), // covers the answer's body too
  });
  if (!response.ok) throw new Error(`${CLASSIFIER_URL} answered HTTP ${response.status}`);
  const answer = JSON.parse(await readAnswer(response)) as Verdict;
  if (!["ham", "spam", "quarantine"].includes(answer?.verdict) || !Number.isFinite(answer.score)) {
    throw new Error(`${CLASSIFIER_URL} answered ${JSON.stringify(answer)}`);
  }
  return answer;
}

const encoder = new TextEncoder();

Milter.register({
  ...Milter.empty,
  name: "classify",
  flags: [Milter.Flag.ADDHDRS, Milter.Flag.QUARANTINE],
  envfrom: (ctx) => {
    Milter.setpriv<Collected>(ctx, { parts: [], bytes: 0 });
    return Milter.Stat.Continue;
  },
  header: (ctx, name, value) => {
    collect(Milter.getpriv<Collected>(ctx)!, encoder.encode(`${name}: ${value}\r\n`));
    return Milter.Stat.Continue;
  },
  eoh: (ctx) => {
    collect(Milter.getpriv<Collected>(ctx)!, encoder.encode("\r\n"));
    return Milter.Stat.Continue;
  },
  body: (ctx, chunk) => {
    collect(Milter.getpriv<Collected>(ctx)!, chunk);
    return Milter.Stat.Continue;
  },
  eom: async (ctx) => {
    const message = Milter.getpriv<Collected>(ctx)!;
    Milter.setpriv(ctx, null);
    let result: Verdict;
    try {
      result = await classify(message);
    } catch (error) {
      // Fail closed: mail the service could not judge must not go through
      // unfiltered. A 4xx makes the sender retry later.
      console.error(`classify: ${error}`);
      Milter.setreply(ctx, "451", "4.3.0", "message could not be checked; try again later");
      return Milter.Stat.Tempfail;
    }
    if (result.verdict === "spam") {
      Milter.setreply(ctx, "550", "5.7.1", `message refused as spam (score ${result.score})`);
      return Milter.Stat.Reject;
    }
    if (result.verdict === "quarantine") Milter.quarantine(ctx, `classifier score ${result.score}`);
    Milter.addheader(ctx, "X-Spam-Score", String(result.score));
    return Milter.Stat.Continue;
  },
  abort: (ctx) => {
    Milter.setpriv(ctx, null);
    return Milter.Stat.Continue;
  },
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main({ callbackTimeout: CALLBACK_TIMEOUT });
