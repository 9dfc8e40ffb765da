/**
 * The four variant types of the OCaml module (`stat`, `flag`, `stage`,
 * `step`), each a frozen object of string constants plus the union type of
 * those strings, and the pure conversions to and from libmilter's numbers.
 *
 * @module
 */

import * as C from "../ffi/constants.ts";

/** The frozen object `{ K: "K", … }` of the keys of a code table, in its order. */
function variant<K extends string>(table: Readonly<Record<K, number>>): { readonly [P in K]: P } {
  return Object.freeze(Object.fromEntries(Object.keys(table).map((k) => [k, k]))) as { readonly [P in K]: P };
}

/** The C value of each variant constructor, in OCaml constructor order. */
export const STAT_CODES: Readonly<Record<Stat, number>> = {
  Continue: C.SMFIS_CONTINUE,
  Reject: C.SMFIS_REJECT,
  Discard: C.SMFIS_DISCARD,
  Accept: C.SMFIS_ACCEPT,
  Tempfail: C.SMFIS_TEMPFAIL,
  No_reply: C.SMFIS_NOREPLY,
  Skip: C.SMFIS_SKIP,
  All: C.SMFIS_ALL_OPTS,
};
export const FLAG_BITS: Readonly<Record<Flag, number>> = {
  ADDHDRS: C.SMFIF_ADDHDRS,
  CHGHDRS: C.SMFIF_CHGHDRS,
  CHGBODY: C.SMFIF_CHGBODY,
  ADDRCPT: C.SMFIF_ADDRCPT,
  ADDRCPT_PAR: C.SMFIF_ADDRCPT_PAR,
  DELRCPT: C.SMFIF_DELRCPT,
  QUARANTINE: C.SMFIF_QUARANTINE,
  CHGFROM: C.SMFIF_CHGFROM,
  SETSYMLIST: C.SMFIF_SETSYMLIST,
};
export const STAGE_CODES: Readonly<Record<Stage, number>> = {
  CONNECT: C.SMFIM_CONNECT,
  HELO: C.SMFIM_HELO,
  ENVFROM: C.SMFIM_ENVFROM,
  ENVRCPT: C.SMFIM_ENVRCPT,
  DATA: C.SMFIM_DATA,
  EOM: C.SMFIM_EOM,
  EOH: C.SMFIM_EOH,
};
export const STEP_BITS: Readonly<Record<Step, number>> = {
  NOCONNECT: C.SMFIP_NOCONNECT,
  NOHELO: C.SMFIP_NOHELO,
  NOMAIL: C.SMFIP_NOMAIL,
  NORCPT: C.SMFIP_NORCPT,
  NOBODY: C.SMFIP_NOBODY,
  NOHDRS: C.SMFIP_NOHDRS,
  NOEOH: C.SMFIP_NOEOH,
  NR_HDR: C.SMFIP_NR_HDR,
  NOUNKNOWN: C.SMFIP_NOUNKNOWN,
  NODATA: C.SMFIP_NODATA,
  SKIP: C.SMFIP_SKIP,
  RCPT_REJ: C.SMFIP_RCPT_REJ,
  NR_CONN: C.SMFIP_NR_CONN,
  NR_HELO: C.SMFIP_NR_HELO,
  NR_MAIL: C.SMFIP_NR_MAIL,
  NR_RCPT: C.SMFIP_NR_RCPT,
  NR_DATA: C.SMFIP_NR_DATA,
  NR_UNKN: C.SMFIP_NR_UNKN,
  NR_EOH: C.SMFIP_NR_EOH,
  NR_BODY: C.SMFIP_NR_BODY,
  HDR_LEADSPC: C.SMFIP_HDR_LEADSPC,
  MDS_256K: C.SMFIP_MDS_256K,
  MDS_1M: C.SMFIP_MDS_1M,
};

/**
 * What a callback answers (libmilter's `sfsistat`).
 *
 * - `Continue`: go on to the next stage.
 * - `Reject`: reject the connection (connect, helo), the message (envfrom,
 *   header…eom) or this recipient (envrcpt), with a 5xx reply.
 * - `Discard`: accept the message and throw it away (message stages only).
 * - `Accept`: accept the message (or connection) without calling the
 *   filter's later callbacks for it.
 * - `Tempfail`: answer 4xx; the client may try again later.
 * - `No_reply`: send no reply; only for steps negotiated as `NR_*`.
 * - `Skip`: skip the rest of the body chunks (body only, when the MTA offers `SKIP`).
 * - `All`: from `negotiate` only: take every action and step the MTA offers.
 */
export const Stat: {
  /** Go on to the next stage. */
  readonly Continue: "Continue";
  /** Refuse the connection, the message or this recipient, with a 5xx reply. */
  readonly Reject: "Reject";
  /** Accept the message and throw it away (message stages only). */
  readonly Discard: "Discard";
  /** Accept the message (or connection) without calling the later callbacks for it. */
  readonly Accept: "Accept";
  /** Answer 4xx: the client may try again later. */
  readonly Tempfail: "Tempfail";
  /** Send no reply; only for steps negotiated as `NR_*`. */
  readonly No_reply: "No_reply";
  /** Skip the rest of the body chunks (body only, when the MTA offers `SKIP`). */
  readonly Skip: "Skip";
  /** From `negotiate` only: take every action and step the MTA offers. */
  readonly All: "All";
} = variant(STAT_CODES);
/** A callback's answer: one of the values of {@linkcode Stat}. */
export type Stat = keyof typeof Stat;

/**
 * The actions a filter must declare (in `Filter.flags`, or from
 * `negotiate`) before it may take them at end of message.
 */
export const Flag: {
  /** Add headers (`addheader`, `insheader`); `SMFIF_ADDHDRS`. */
  readonly ADDHDRS: "ADDHDRS";
  /** Change or delete headers (`chgheader`); `SMFIF_CHGHDRS`. */
  readonly CHGHDRS: "CHGHDRS";
  /** Replace the body (`replacebody`); `SMFIF_CHGBODY`. */
  readonly CHGBODY: "CHGBODY";
  /** Add recipients (`addrcpt`); `SMFIF_ADDRCPT`. */
  readonly ADDRCPT: "ADDRCPT";
  /** Add recipients with ESMTP arguments (`addrcpt_par`); `SMFIF_ADDRCPT_PAR`. */
  readonly ADDRCPT_PAR: "ADDRCPT_PAR";
  /** Remove recipients (`delrcpt`); `SMFIF_DELRCPT`. */
  readonly DELRCPT: "DELRCPT";
  /** Quarantine the message (`quarantine`); `SMFIF_QUARANTINE`. */
  readonly QUARANTINE: "QUARANTINE";
  /** Change the envelope sender (`chgfrom`); `SMFIF_CHGFROM`. */
  readonly CHGFROM: "CHGFROM";
  /** Request macros per stage (`setsymlist`); `SMFIF_SETSYMLIST`. */
  readonly SETSYMLIST: "SETSYMLIST";
} = variant(FLAG_BITS);
/** An action flag: one of the values of {@linkcode Flag}. */
export type Flag = keyof typeof Flag;

/** The protocol stages for which `setsymlist` can request macros. */
export const Stage: {
  /** The connect stage (`SMFIM_CONNECT`). */
  readonly CONNECT: "CONNECT";
  /** The HELO/EHLO stage (`SMFIM_HELO`). */
  readonly HELO: "HELO";
  /** The MAIL FROM stage (`SMFIM_ENVFROM`). */
  readonly ENVFROM: "ENVFROM";
  /** The RCPT TO stage (`SMFIM_ENVRCPT`). */
  readonly ENVRCPT: "ENVRCPT";
  /** The DATA stage (`SMFIM_DATA`). */
  readonly DATA: "DATA";
  /** The end of message (`SMFIM_EOM`). */
  readonly EOM: "EOM";
  /** The end of headers (`SMFIM_EOH`). */
  readonly EOH: "EOH";
} = variant(STAGE_CODES);
/** A protocol stage: one of the values of {@linkcode Stage}. */
export type Stage = keyof typeof Stage;

/**
 * Protocol steps and options, as offered by the MTA and requested from
 * `negotiate`: `NO*` asks the MTA not to send a stage, `NR_*` promises not to
 * reply to it (the callback must then return `No_reply`).
 */
export const Step: {
  /** Do not send connect (`SMFIP_NOCONNECT`). */
  readonly NOCONNECT: "NOCONNECT";
  /** Do not send HELO (`SMFIP_NOHELO`). */
  readonly NOHELO: "NOHELO";
  /** Do not send MAIL FROM (`SMFIP_NOMAIL`). */
  readonly NOMAIL: "NOMAIL";
  /** Do not send RCPT TO (`SMFIP_NORCPT`). */
  readonly NORCPT: "NORCPT";
  /** Do not send the body (`SMFIP_NOBODY`). */
  readonly NOBODY: "NOBODY";
  /** Do not send headers (`SMFIP_NOHDRS`). */
  readonly NOHDRS: "NOHDRS";
  /** Do not send end of headers (`SMFIP_NOEOH`). */
  readonly NOEOH: "NOEOH";
  /** No reply to headers (`SMFIP_NR_HDR`). */
  readonly NR_HDR: "NR_HDR";
  /** Do not send unknown commands (`SMFIP_NOUNKNOWN`). */
  readonly NOUNKNOWN: "NOUNKNOWN";
  /** Do not send DATA (`SMFIP_NODATA`). */
  readonly NODATA: "NODATA";
  /** The MTA understands `Skip` from the body callback (`SMFIP_SKIP`). */
  readonly SKIP: "SKIP";
  /** Also send recipients the MTA rejected (`SMFIP_RCPT_REJ`). */
  readonly RCPT_REJ: "RCPT_REJ";
  /** No reply to connect (`SMFIP_NR_CONN`). */
  readonly NR_CONN: "NR_CONN";
  /** No reply to HELO (`SMFIP_NR_HELO`). */
  readonly NR_HELO: "NR_HELO";
  /** No reply to MAIL FROM (`SMFIP_NR_MAIL`). */
  readonly NR_MAIL: "NR_MAIL";
  /** No reply to RCPT TO (`SMFIP_NR_RCPT`). */
  readonly NR_RCPT: "NR_RCPT";
  /** No reply to DATA (`SMFIP_NR_DATA`). */
  readonly NR_DATA: "NR_DATA";
  /** No reply to unknown commands (`SMFIP_NR_UNKN`). */
  readonly NR_UNKN: "NR_UNKN";
  /** No reply to end of headers (`SMFIP_NR_EOH`). */
  readonly NR_EOH: "NR_EOH";
  /** No reply to body chunks (`SMFIP_NR_BODY`). */
  readonly NR_BODY: "NR_BODY";
  /** Header values keep their leading space (`SMFIP_HDR_LEADSPC`). */
  readonly HDR_LEADSPC: "HDR_LEADSPC";
  /** Body chunks of up to 256 KiB (`SMFIP_MDS_256K`). */
  readonly MDS_256K: "MDS_256K";
  /** Body chunks of up to 1 MiB (`SMFIP_MDS_1M`). */
  readonly MDS_1M: "MDS_1M";
} = variant(STEP_BITS);
/** A protocol step: one of the values of {@linkcode Step}. */
export type Step = keyof typeof Step;

const has = (table: object, key: unknown): boolean => typeof key === "string" && Object.hasOwn(table, key);

/** Whether `value` is one of the {@linkcode Stat} strings. */
export function isStat(value: unknown): value is Stat {
  return has(STAT_CODES, value);
}
export function isFlag(value: unknown): value is Flag {
  return has(FLAG_BITS, value);
}
export function isStage(value: unknown): value is Stage {
  return has(STAGE_CODES, value);
}
export function isStep(value: unknown): value is Step {
  return has(STEP_BITS, value);
}

/** ORs the bits of `names` (each already validated) into one mask. */
export function encodeMask<K extends string>(table: Readonly<Record<K, number>>, names: readonly K[]): number {
  let mask = 0;
  for (const name of names) mask |= table[name];
  return mask >>> 0;
}

/** Lists the names whose bit is set in `mask`, in table (OCaml) order. Unknown bits are dropped. */
export function decodeMask<K extends string>(table: Readonly<Record<K, number>>, mask: number): K[] {
  return (Object.keys(table) as K[]).filter((name) => (mask & table[name]) !== 0);
}
