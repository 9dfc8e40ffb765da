/**
 * The one table of stages: for each callback of a filter, what libmilter and
 * the MTA do around it. Every other list of callbacks in the binding is
 * derived from {@linkcode STAGES}; their order, and each callback's C symbol
 * and index, come from `ffi/symbols.ts` (`struct smfiDesc` order), and what
 * the shim can pipeline from `ffi/shim.ts`. `test/contract.test.ts` checks
 * the C side against them.
 *
 * What happens at envrcpt when something fails? `STAGES.envrcpt`: the MTA
 * skips the stage for a filter without the callback (`NORCPT`), a connection
 * may promise not to reply there (`NR_RCPT`, and a failure is then answered
 * at the next stage that replies), and a Tempfail refuses that recipient
 * only: the message goes on (`failure: "command"`).
 *
 * @module
 */

import { PIPELINED_SYMBOLS, QUEUED_ALWAYS_SYMBOLS } from "../ffi/shim.ts";
import { CALLBACK_SYMBOLS, type CallbackSymbol } from "../ffi/symbols.ts";
import type { Step } from "./variants.ts";

/** The name of a callback of a filter: its C symbol without `xxfi_`. */
export type CallbackName =
  | "connect"
  | "helo"
  | "envfrom"
  | "envrcpt"
  | "header"
  | "eoh"
  | "body"
  | "eom"
  | "abort"
  | "close"
  | "unknown"
  | "data"
  | "negotiate";

/** Written out for the published types; checked when this file compiles to be exactly the C symbols without `xxfi_`. */
const SAME_NAMES: [CallbackSymbol, `xxfi_${CallbackName}`] extends [`xxfi_${CallbackName}`, CallbackSymbol] ? true
  : never = true;
void SAME_NAMES;

/**
 * What a failed callback's Tempfail concerns, as libmilter and the MTA take
 * it: the rest of the `connection` (before MAIL), the `message`, only the
 * `command` (libmilter's `CT_IGNO`: the recipient, or the unknown command;
 * the message goes on), or nothing, as libmilter ignores the answer
 * (`ignored`: no SMTP reply follows).
 */
export type FailureScope = "connection" | "message" | "command" | "ignored";

/** One callback's facts. */
export interface Stage {
  readonly name: CallbackName;
  /** Its C symbol, the key of its prototype in `ffi/symbols.ts`. */
  readonly symbol: CallbackSymbol;
  /** Its index in `struct smfiDesc` and the shim's `CB_*`. */
  readonly index: number;
  /** The `NO*` step libmilter asks for when the filter has no callback here; `null` where the MTA always sends it. */
  readonly absentStep: Step | null;
  /** The `NR_*` step by which a connection promises not to reply here; `null` where there is none. */
  readonly noReplyStep: Step | null;
  /** What a Tempfail here concerns (see {@linkcode FailureScope}). */
  readonly failure: FailureScope;
  /** Whether the shim can answer it at once and queue the call, when its stage is negotiated as no reply. */
  readonly pipelinable: boolean;
  /**
   * Whether the shim queues it for every connection while pipelining is on
   * and the filter has no callback here (abort and close: libmilter ignores
   * their answers, and the binding runs them only to end the message or the
   * connection): libmilter's thread goes on at once, and the call runs in
   * order with the connection's other calls. A filter's own abort or close
   * runs while libmilter waits, as every callback that is not pipelined.
   */
  readonly queuedWithoutCallback: boolean;
}

type Facts = Pick<Stage, "absentStep" | "noReplyStep" | "failure">;

const FACTS: { readonly [K in CallbackName]: Facts } = {
  connect: { absentStep: "NOCONNECT", noReplyStep: "NR_CONN", failure: "connection" },
  helo: { absentStep: "NOHELO", noReplyStep: "NR_HELO", failure: "connection" },
  envfrom: { absentStep: "NOMAIL", noReplyStep: "NR_MAIL", failure: "message" },
  envrcpt: { absentStep: "NORCPT", noReplyStep: "NR_RCPT", failure: "command" },
  header: { absentStep: "NOHDRS", noReplyStep: "NR_HDR", failure: "message" },
  eoh: { absentStep: "NOEOH", noReplyStep: "NR_EOH", failure: "message" },
  body: { absentStep: "NOBODY", noReplyStep: "NR_BODY", failure: "message" },
  eom: { absentStep: null, noReplyStep: null, failure: "message" },
  abort: { absentStep: null, noReplyStep: null, failure: "ignored" },
  close: { absentStep: null, noReplyStep: null, failure: "ignored" },
  unknown: { absentStep: "NOUNKNOWN", noReplyStep: "NR_UNKN", failure: "command" },
  data: { absentStep: "NODATA", noReplyStep: "NR_DATA", failure: "message" },
  negotiate: { absentStep: null, noReplyStep: null, failure: "ignored" },
};

/** The callbacks of a filter, in `struct smfiDesc` order. */
export const CALLBACK_NAMES: readonly CallbackName[] = CALLBACK_SYMBOLS.map((symbol) =>
  symbol.slice("xxfi_".length) as CallbackName
);

/** Every callback's {@linkcode Stage}, by name. */
export const STAGES: { readonly [K in CallbackName]: Stage } = Object.freeze(
  Object.fromEntries(
    CALLBACK_NAMES.map((name, index) => {
      const symbol = CALLBACK_SYMBOLS[index];
      const stage: Stage = {
        name,
        symbol,
        index,
        ...FACTS[name],
        pipelinable: (PIPELINED_SYMBOLS as readonly CallbackSymbol[]).includes(symbol),
        queuedWithoutCallback: (QUEUED_ALWAYS_SYMBOLS as readonly CallbackSymbol[]).includes(symbol),
      };
      return [name, Object.freeze(stage)];
    }),
  ),
) as { readonly [K in CallbackName]: Stage };

/** The stage of the callback whose C symbol is `symbol`. */
export function stageOf(symbol: CallbackSymbol): Stage {
  return STAGES[symbol.slice("xxfi_".length) as CallbackName];
}
