/**
 * Pure conversions between libmilter's C values and the facade's TypeScript
 * values. None of them touches koffi or a socket, so each is unit-tested on
 * its own.
 *
 * @module
 */

import { AF_INET, AF_INET6, AF_UNIX, MAXREPLIES, MAXREPLYLEN } from "../ffi/constants.ts";

/**
 * The client address of a connection (the OCaml `Unix.sockaddr`): an IPv4 or
 * IPv6 address with its port, or the path of a local socket.
 */
export type SockAddr =
  | {
    /** IPv4. */
    readonly family: "inet";
    /** Dotted quad, e.g. `192.0.2.1`. */
    readonly address: string;
    /** The client's TCP port. */
    readonly port: number;
  }
  | {
    /** IPv6. */
    readonly family: "inet6";
    /** RFC 5952 text, e.g. `2001:db8::1`. */
    readonly address: string;
    /** The client's TCP port. */
    readonly port: number;
  }
  | {
    /** A local (unix-domain) client. */
    readonly family: "unix";
    /** The socket path the MTA gave. */
    readonly path: string;
  };

/** How many bytes of a `struct sockaddr` each family needs. */
export function sockaddrLength(family: number): number {
  switch (family) {
    case AF_INET:
      return 8; // family, port, in_addr
    case AF_INET6:
      return 24; // family, port, flowinfo, in6_addr
    case AF_UNIX:
      return 110; // family, sun_path[108]
    default:
      return 2;
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Reads `sa_family`, stored in host byte order at the start of every sockaddr. */
export function sockaddrFamily(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, 2).getUint16(0, LITTLE_ENDIAN);
}

/**
 * Decodes the bytes of a `struct sockaddr` (at least
 * {@linkcode sockaddrLength} of its family). Families other than AF_INET,
 * AF_INET6 and AF_UNIX give `null`.
 */
export function decodeSockAddr(bytes: Uint8Array): SockAddr | null {
  if (bytes.length < 2) return null;
  const family = sockaddrFamily(bytes);
  if (bytes.length < sockaddrLength(family)) return null;
  const port = (bytes[2] << 8) | bytes[3]; // network byte order
  switch (family) {
    case AF_INET:
      return { family: "inet", address: bytes.subarray(4, 8).join("."), port };
    case AF_INET6:
      return { family: "inet6", address: formatIPv6(bytes.subarray(8, 24)), port };
    case AF_UNIX: {
      const raw = bytes.subarray(2, 110);
      const end = raw.indexOf(0);
      return { family: "unix", path: new TextDecoder().decode(end < 0 ? raw : raw.subarray(0, end)) };
    }
    default:
      return null;
  }
}

/** Formats 16 address bytes as RFC 5952 text (`2001:db8::1`, `::ffff:192.0.2.1`). */
export function formatIPv6(b: Uint8Array): string {
  const words = Array.from({ length: 8 }, (_, i) => (b[2 * i] << 8) | b[2 * i + 1]);
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) {
    return `::ffff:${b.subarray(12, 16).join(".")}`;
  }
  // The longest run of two or more zero words becomes "::" (the first, on ties).
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (ws: number[]): string => ws.map((w) => w.toString(16)).join(":");
  if (best < 0) return hex(words);
  return `${hex(words.slice(0, best))}::${hex(words.slice(best + bestLen))}`;
}

/**
 * Splits the NUL-terminated `argv` libmilter gives envfrom/envrcpt into the
 * address (`argv[0]`) and its ESMTP arguments, kept in wire order.
 */
export function splitArgv(argv: readonly string[]): [string, string[]] {
  return [argv[0] ?? "", argv.slice(1)];
}

/** Escapes `%` for SMTP reply text, which libmilter passes through a format. */
export function escapeReplyText(text: string): string {
  return text.replaceAll("%", "%%");
}

/**
 * Why libmilter would refuse these reply lines, or `null` when they are
 * acceptable: 1 to 32 lines, each at most 980 bytes, none containing CR or LF.
 */
export function replyLinesProblem(lines: readonly string[]): string | null {
  if (lines.length === 0) return "at least one line is required";
  if (lines.length > MAXREPLIES) return `at most ${MAXREPLIES} lines are allowed, got ${lines.length}`;
  for (const [i, line] of lines.entries()) {
    if (typeof line !== "string") return `line ${i + 1} is not a string`;
    if (/[\r\n]/.test(line)) return `line ${i + 1} contains CR or LF`;
    const bytes = new TextEncoder().encode(line).length;
    if (bytes > MAXREPLYLEN) return `line ${i + 1} is ${bytes} bytes long, more than ${MAXREPLYLEN}`;
  }
  return null;
}

/**
 * Why libmilter would refuse this reply code pair, or `null`: `rcode` is a
 * 4xx or 5xx SMTP code, `xcode` (when given) an RFC 3463 enhanced code whose
 * class matches it.
 */
export function replyCodeProblem(rcode: string, xcode: string | null): string | null {
  if (!/^[45]\d\d$/.test(rcode)) return `reply code ${JSON.stringify(rcode)} is not a 4xx or 5xx SMTP code`;
  if (xcode === null) return null;
  if (!/^[245]\.\d{1,3}\.\d{1,3}$/.test(xcode)) {
    return `extended code ${JSON.stringify(xcode)} is not of the form ${rcode[0]}.x.y`;
  }
  if (xcode[0] !== rcode[0]) return `extended code ${xcode} does not match the class of ${rcode}`;
  return null;
}

/**
 * A milter socket spec, parsed: a unix socket's path, or an inet port and
 * the host it is bound to (`null`: any address).
 */
export type SocketSpec =
  | { readonly kind: "unix"; readonly path: string }
  | { readonly kind: "inet" | "inet6"; readonly port: number; readonly host: string | null };

/**
 * Parses a libmilter socket spec: `unix:/path` or `local:/path`, a bare path
 * (what libmilter makes of a spec without a type), `inet:port@host` or
 * `inet6:port@host` (the host may be left out). Returns why it is not one
 * instead: `"type"` for an unknown type, `"path"` for a unix spec without a
 * path, `"port"` for an inet spec without a port from 1 to 65535 (libmilter
 * would silently bind another one).
 */
export function parseSocketSpec(spec: string): SocketSpec | "type" | "path" | "port" {
  const match = /^(unix|local|inet|inet6):(.*)$/.exec(spec);
  if (!match) return spec.includes(":") ? "type" : { kind: "unix", path: spec };
  const [, type, rest] = match;
  if (type === "unix" || type === "local") return rest === "" ? "path" : { kind: "unix", path: rest };
  const inet = /^(\d+)(?:@(.+))?$/.exec(rest);
  const port = inet ? Number(inet[1]) : 0;
  if (!inet || port < 1 || port > 65535) return "port";
  return { kind: type as "inet" | "inet6", port, host: inet[2] ?? null };
}

/**
 * Where to connect to reach an inet socket: its host, or the loopback
 * address of its family when it listens on any address.
 */
export function connectHost(spec: { readonly kind: "inet" | "inet6"; readonly host: string | null }): string {
  if (spec.host !== null && !["0.0.0.0", "::", "*"].includes(spec.host)) return spec.host;
  return spec.kind === "inet6" ? "::1" : "127.0.0.1";
}

/** Where to connect: a unix socket's path, or a TCP port and host. */
export type ConnectTarget = {
  /** A unix socket's path. */
  readonly path: string;
} | {
  /** The TCP port. */
  readonly port: number;
  /** The host to connect to. */
  readonly host: string;
};

/** Where to connect to reach the socket of `spec` (see {@linkcode connectHost}). */
export function connectTarget(spec: SocketSpec): ConnectTarget {
  return spec.kind === "unix" ? { path: spec.path } : { port: spec.port, host: connectHost(spec) };
}

/** The longest delay `setTimeout` keeps (2³¹ − 1 ms, about 24.8 days); longer ones fire at once. */
export const MAX_TIMER_MS = 0x7fffffff;

/**
 * The `setTimeout` delay for a duration of `seconds` (≥ 0): `null` for
 * `Infinity` (no timer at all), and at most {@linkcode MAX_TIMER_MS}, so
 * that a long duration never overflows into an immediate one.
 */
export function timerDelay(seconds: number): number | null {
  if (seconds === Infinity) return null;
  return Math.min(Math.ceil(seconds * 1000), MAX_TIMER_MS);
}

/**
 * A macro name as libmilter matches it: a one-letter macro may be written
 * with or without braces (`i` and `{i}`: smfi_getsymval tries both), a
 * longer one only as it was sent (`{mail_addr}`, not `mail_addr`).
 */
export function macroKey(name: string): string {
  return /^\{.\}$/su.test(name) ? name.slice(1, -1) : name;
}
