/**
 * The koffi declarations of libmilter: every callback prototype of
 * `struct smfiDesc`, the struct itself, and every `smfi_*` function, keyed by
 * C name. The C declaration is the definition.
 *
 * Pointers the facade decodes itself are declared `void *` so they arrive as
 * BigInt addresses: sockaddr, argv, body, negotiate's output words, and the
 * C strings, whose raw bytes `rawargs` offers (they need not be UTF-8).
 *
 * @module
 */

/** The xxfi_* callback prototypes, in `struct smfiDesc` order. */
export const CALLBACK_PROTOTYPES = {
  xxfi_connect: "int xxfi_connect(SMFICTX *ctx, void *hostname, void *hostaddr)",
  xxfi_helo: "int xxfi_helo(SMFICTX *ctx, void *helohost)",
  xxfi_envfrom: "int xxfi_envfrom(SMFICTX *ctx, void *argv)",
  xxfi_envrcpt: "int xxfi_envrcpt(SMFICTX *ctx, void *argv)",
  xxfi_header: "int xxfi_header(SMFICTX *ctx, void *headerf, void *headerv)",
  xxfi_eoh: "int xxfi_eoh(SMFICTX *ctx)",
  xxfi_body: "int xxfi_body(SMFICTX *ctx, void *bodyp, size_t len)",
  xxfi_eom: "int xxfi_eom(SMFICTX *ctx)",
  xxfi_abort: "int xxfi_abort(SMFICTX *ctx)",
  xxfi_close: "int xxfi_close(SMFICTX *ctx)",
  xxfi_unknown: "int xxfi_unknown(SMFICTX *ctx, void *arg)",
  xxfi_data: "int xxfi_data(SMFICTX *ctx)",
  xxfi_negotiate:
    "int xxfi_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3, void *pf0, void *pf1, void *pf2, void *pf3)",
} as const;

export type CallbackSymbol = keyof typeof CALLBACK_PROTOTYPES;

/** The smfi_* functions. `smfi_setmlreply` is variadic (NULL-terminated). */
export const FUNCTION_PROTOTYPES = {
  smfi_register: "int smfi_register(smfiDesc descr)",
  smfi_setconn: "int smfi_setconn(const char *oconn)",
  smfi_settimeout: "int smfi_settimeout(int otimeout)",
  smfi_setbacklog: "int smfi_setbacklog(int obacklog)",
  smfi_setdbg: "int smfi_setdbg(int level)",
  smfi_setmaxdatasize: "size_t smfi_setmaxdatasize(size_t sz)",
  smfi_opensocket: "int smfi_opensocket(bool rmsocket)",
  smfi_main: "int smfi_main()",
  smfi_stop: "int smfi_stop()",
  smfi_version: "int smfi_version(_Out_ unsigned int *major, _Out_ unsigned int *minor, _Out_ unsigned int *pl)",
  smfi_getsymval: "const char *smfi_getsymval(SMFICTX *ctx, const char *symname)",
  smfi_setreply: "int smfi_setreply(SMFICTX *ctx, const char *rcode, const char *xcode, const char *message)",
  smfi_setmlreply: "int smfi_setmlreply(SMFICTX *ctx, const char *rcode, const char *xcode, ...)",
  // The same C function with its 32 lines and NULL terminator as fixed
  // parameters: koffi passes at most 64 JS arguments, too few for 32 lines
  // as variadic (type, value) pairs. Only used where the variadic and fixed
  // calling conventions agree for pointer arguments; see ffi/setmlreply.ts.
  smfi_setmlreply_fixed:
    "int smfi_setmlreply(SMFICTX *ctx, const char *rcode, const char *xcode, const char *l1, const char *l2, const char *l3, const char *l4, const char *l5, const char *l6, const char *l7, const char *l8, const char *l9, const char *l10, const char *l11, const char *l12, const char *l13, const char *l14, const char *l15, const char *l16, const char *l17, const char *l18, const char *l19, const char *l20, const char *l21, const char *l22, const char *l23, const char *l24, const char *l25, const char *l26, const char *l27, const char *l28, const char *l29, const char *l30, const char *l31, const char *l32, const char *end)",
  smfi_addheader: "int smfi_addheader(SMFICTX *ctx, const char *headerf, const char *headerv)",
  smfi_chgheader: "int smfi_chgheader(SMFICTX *ctx, const char *headerf, int hdridx, const char *headerv)",
  smfi_insheader: "int smfi_insheader(SMFICTX *ctx, int hdridx, const char *headerf, const char *headerv)",
  smfi_chgfrom: "int smfi_chgfrom(SMFICTX *ctx, const char *mail, const char *args)",
  smfi_addrcpt: "int smfi_addrcpt(SMFICTX *ctx, const char *rcpt)",
  smfi_addrcpt_par: "int smfi_addrcpt_par(SMFICTX *ctx, const char *rcpt, const char *args)",
  smfi_delrcpt: "int smfi_delrcpt(SMFICTX *ctx, const char *rcpt)",
  smfi_replacebody: "int smfi_replacebody(SMFICTX *ctx, const uint8_t *bodyp, int bodylen)",
  smfi_progress: "int smfi_progress(SMFICTX *ctx)",
  smfi_quarantine: "int smfi_quarantine(SMFICTX *ctx, const char *reason)",
  smfi_setsymlist: "int smfi_setsymlist(SMFICTX *ctx, int stage, const char *macros)",
} as const;

export type FunctionSymbol = keyof typeof FUNCTION_PROTOTYPES;

/**
 * libmilter internals that are exported but not part of its API, bound only
 * where present: `mi_stop()` reads the stop state (0 = running), which
 * libmilter's own signal thread may set without the binding knowing.
 */
export const INTERNAL_PROTOTYPES = {
  mi_stop: "int mi_stop()",
} as const;

export type InternalSymbol = keyof typeof INTERNAL_PROTOTYPES;

/**
 * libc functions reached through libmilter's own dependency on libc (dlsym
 * searches a library's dependencies), used to bound the number of connections
 * libmilter can accept; see `src/limits.ts`.
 */
export const LIBC_PROTOTYPES = {
  getrlimit: "int getrlimit(int resource, _Out_ rlimit *rlim)",
  setrlimit: "int setrlimit(int resource, const rlimit *rlim)",
  fcntl: "int fcntl(int fd, int cmd, ...)",
  strlen: "size_t strlen(const void *s)",
  getsockopt: "int getsockopt(int fd, int level, int name, _Out_ int *value, _Inout_ uint32_t *len)",
  setsockopt: "int setsockopt(int fd, int level, int name, const int *value, uint32_t len)",
  getsockname: "int getsockname(int fd, void *addr, _Inout_ uint32_t *len)",
  dlopen: "void *dlopen(const char *filename, int flags)",
} as const;

export type LibcSymbol = keyof typeof LIBC_PROTOTYPES;
