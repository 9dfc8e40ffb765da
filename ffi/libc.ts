/**
 * The libc work the binding does beside libmilter, as plain typed
 * functions: the file-descriptor limit that bounds connections, probing
 * open descriptors, finding libmilter's listening TCP socket and setting
 * TCP_NODELAY on it, and the raw bytes of C strings. Out-parameters and
 * structs stay in here. Every function answers `null` or `false` where the C
 * library lacks what it needs.
 *
 * @module
 */

import process from "node:process";
import { AF_INET, AF_INET6, IPPROTO_TCP, SO_ACCEPTCONN, SOL_SOCKET, TCP_NODELAY } from "./constants.ts";
import { readBytes } from "./memory.ts";
import type { LibcSymbol, Pointer, Signatures } from "./symbols.ts";
import type { LIBC_PROTOTYPES } from "./symbols.ts";

/** The libc functions found, each `null` where the C library lacks it. */
export type Libc = { readonly [K in LibcSymbol]: Signatures<typeof LIBC_PROTOTYPES>[K] | null };

/** The soft and hard limits on open files. */
export interface FileLimit {
  readonly soft: number;
  readonly hard: number;
}

const F_GETFD = 1;

/** The platform's RLIMIT_NOFILE resource number, or `null` where unknown. */
function rlimitNofile(): number | null {
  switch (process.platform) {
    case "linux":
      return 7;
    case "freebsd":
    case "darwin":
    case "openbsd":
    case "netbsd":
      return 8;
    default:
      return null;
  }
}

/** The process's limit on open files (`getrlimit(RLIMIT_NOFILE)`), or `null` where it cannot be read. */
export function fileLimit(libc: Libc): FileLimit | null {
  const resource = rlimitNofile();
  if (resource === null || !libc.getrlimit) return null;
  const out = { rlim_cur: 0, rlim_max: 0 };
  if (libc.getrlimit(resource, out) !== 0) return null;
  return { soft: Number(out.rlim_cur), hard: Number(out.rlim_max) };
}

/** Sets the limit on open files; `false` where it cannot be set. */
export function setFileLimit(libc: Libc, limit: FileLimit): boolean {
  const resource = rlimitNofile();
  if (resource === null || !libc.setrlimit) return false;
  return libc.setrlimit(resource, { rlim_cur: limit.soft, rlim_max: limit.hard }) === 0;
}

/** Whether descriptor `fd` is open (`fcntl(fd, F_GETFD)`), `null` without fcntl. */
export function isOpenFd(libc: Libc, fd: number): boolean | null {
  return libc.fcntl ? libc.fcntl(fd, F_GETFD) !== -1 : null;
}

/** Counts the open descriptors numbered below `below`; `null` without fcntl. */
export function countOpenFds(libc: Libc, below: number): number | null {
  if (!libc.fcntl) return null;
  let n = 0;
  for (let fd = 0; fd < below; fd++) if (isOpenFd(libc, fd)) n++;
  return n;
}

/** Stop looking for a listener after this many unused descriptor numbers in a row. */
const GAP = 256;

/** The open descriptors, lowest first, until {@linkcode GAP} unused numbers in a row. */
function* openFds(libc: Libc): Generator<number> {
  for (let fd = 0, unused = 0; unused < GAP; fd++) {
    if (isOpenFd(libc, fd)) {
      unused = 0;
      yield fd;
    } else unused++;
  }
}

/** The address family of a `struct sockaddr` (Linux: a host-order `unsigned short` first). */
function family(addr: Uint8Array): number {
  return new Uint16Array(addr.buffer, addr.byteOffset, 1)[0];
}

/** The descriptor of this process's listening TCP socket on `port` (Linux only), or `null`. */
export function findTcpListener(libc: Libc, port: number): number | null {
  const { fcntl, getsockopt, getsockname } = libc;
  if (process.platform !== "linux" || !fcntl || !getsockopt || !getsockname) return null;
  for (const fd of openFds(libc)) {
    const value = [0];
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, value, [4]) !== 0 || value[0] !== 1) continue;
    const addr = new Uint8Array(128);
    if (getsockname(fd, addr, [128]) !== 0) continue;
    const f = family(addr);
    if ((f === AF_INET || f === AF_INET6) && ((addr[2] << 8) | addr[3]) === port) return fd;
  }
  return null;
}

/** Sets TCP_NODELAY on socket `fd`; `false` where it cannot be set. */
export function setTcpNoDelay(libc: Libc, fd: number): boolean {
  return libc.setsockopt?.(fd, IPPROTO_TCP, TCP_NODELAY, [1], 4) === 0;
}

/** The bytes of the C string at `ptr`, without its NUL; `null` without strlen. */
export function cStringBytes(libc: Libc, ptr: Pointer): Uint8Array | null {
  return libc.strlen ? readBytes(ptr, Number(libc.strlen(ptr))) : null;
}
