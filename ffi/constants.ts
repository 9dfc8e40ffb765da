/**
 * libmilter's numeric constants, under their C names, with the values of
 * `mfapi.h` / `mfdef.h` (Debian package `libmilter-dev`). Nothing outside
 * `ffi/` and `src/variants.ts` should need these.
 *
 * @module
 */

// Return codes of smfi_* functions.
export const MI_SUCCESS = 0;
export const MI_FAILURE = -1;

/** Compile-time `SMFI_VERSION` of libmilter 8.14+ builds without `_FFR_MDS_NEGOTIATE`. */
export const SMFI_VERSION = 0x01000001;

// sfsistat: callback return codes.
export const SMFIS_CONTINUE = 0;
export const SMFIS_REJECT = 1;
export const SMFIS_DISCARD = 2;
export const SMFIS_ACCEPT = 3;
export const SMFIS_TEMPFAIL = 4;
export const SMFIS_NOREPLY = 7;
export const SMFIS_SKIP = 8;
export const SMFIS_ALL_OPTS = 10;

/** Every action of protocol 6 (`SMFI_CURR_ACTS`). */
export const SMFI_CURR_ACTS = 0x1ff;

// SMFIF_*: actions a filter may take at end of message.
export const SMFIF_ADDHDRS = 0x001;
export const SMFIF_CHGBODY = 0x002;
export const SMFIF_ADDRCPT = 0x004;
export const SMFIF_DELRCPT = 0x008;
export const SMFIF_CHGHDRS = 0x010;
export const SMFIF_QUARANTINE = 0x020;
export const SMFIF_CHGFROM = 0x040;
export const SMFIF_ADDRCPT_PAR = 0x080;
export const SMFIF_SETSYMLIST = 0x100;

// SMFIM_*: protocol stages for smfi_setsymlist.
export const SMFIM_CONNECT = 0;
export const SMFIM_HELO = 1;
export const SMFIM_ENVFROM = 2;
export const SMFIM_ENVRCPT = 3;
export const SMFIM_DATA = 4;
export const SMFIM_EOM = 5;
export const SMFIM_EOH = 6;

// SMFIP_*: protocol steps and options.
export const SMFIP_NOCONNECT = 0x00000001;
export const SMFIP_NOHELO = 0x00000002;
export const SMFIP_NOMAIL = 0x00000004;
export const SMFIP_NORCPT = 0x00000008;
export const SMFIP_NOBODY = 0x00000010;
export const SMFIP_NOHDRS = 0x00000020;
export const SMFIP_NOEOH = 0x00000040;
export const SMFIP_NR_HDR = 0x00000080;
export const SMFIP_NOUNKNOWN = 0x00000100;
export const SMFIP_NODATA = 0x00000200;
export const SMFIP_SKIP = 0x00000400;
export const SMFIP_RCPT_REJ = 0x00000800;
export const SMFIP_NR_CONN = 0x00001000;
export const SMFIP_NR_HELO = 0x00002000;
export const SMFIP_NR_MAIL = 0x00004000;
export const SMFIP_NR_RCPT = 0x00008000;
export const SMFIP_NR_DATA = 0x00010000;
export const SMFIP_NR_UNKN = 0x00020000;
export const SMFIP_NR_EOH = 0x00040000;
export const SMFIP_NR_BODY = 0x00080000;
export const SMFIP_HDR_LEADSPC = 0x00100000;
export const SMFIP_MDS_256K = 0x10000000;
export const SMFIP_MDS_1M = 0x20000000;

// Address families as Linux numbers them in struct sockaddr.
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;

/** `smfi_setmlreply` accepts at most this many lines (MAXREPLIES). */
export const MAXREPLIES = 32;
/** Longest line `smfi_setmlreply` accepts (MAXREPLYLEN). */
export const MAXREPLYLEN = 980;

// Socket options, as Linux numbers them (used only on Linux).
export const SOL_SOCKET = 1;
export const SO_ACCEPTCONN = 30;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
