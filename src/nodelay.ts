/**
 * TCP_NODELAY on libmilter's listening socket. libmilter leaves Nagle's
 * algorithm on, and at end of message a filter's modifications go out as
 * several small writes: Nagle holds the last one until the MTA's delayed ACK,
 * about 40 ms per message over `inet:` (stock C filters have this too).
 * Linux copies TCP_NODELAY from a listening socket to the connections it
 * accepts, so setting it once on the listener removes the stall.
 *
 * libmilter does not expose its socket; it is found as the listening TCP
 * socket bound to the configured port.
 *
 * @module
 */

import process from "node:process";
import { AF_INET, AF_INET6, IPPROTO_TCP, SO_ACCEPTCONN, SOL_SOCKET, TCP_NODELAY } from "../ffi/constants.ts";
import type { Libmilter } from "../ffi/load.ts";
import { sockaddrFamily } from "./convert.ts";

const F_GETFD = 1;
/** Stop looking after this many unused descriptor numbers in a row. */
const GAP = 256;

/**
 * Sets TCP_NODELAY on the listening socket of `port`. Returns `true` when
 * done, `false` where it cannot be done (not Linux, or no such socket found).
 */
export function setListenerNoDelay(lib: Libmilter, port: number): boolean {
  const { fcntl, getsockopt, setsockopt, getsockname } = lib.libc;
  if (process.platform !== "linux" || !fcntl || !getsockopt || !setsockopt || !getsockname) return false;
  for (let fd = 0, unused = 0; unused < GAP; fd++) {
    if ((fcntl(fd, F_GETFD) as number) === -1) {
      unused++;
      continue;
    }
    unused = 0;
    const value = [0], len = [4];
    if ((getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, value, len) as number) !== 0 || value[0] !== 1) continue;
    const addr = new Uint8Array(128), addrLen = [128];
    if ((getsockname(fd, addr, addrLen) as number) !== 0) continue;
    const family = sockaddrFamily(addr);
    if ((family !== AF_INET && family !== AF_INET6) || ((addr[2] << 8) | addr[3]) !== port) continue;
    return (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, [1], 4) as number) === 0;
  }
  return false;
}
