/**
 * The C declarations the binding uses, keyed by C name, each beside the
 * TypeScript signature of its koffi binding: libmilter's `xxfi_*` callback
 * prototypes and `smfi_*` functions, its internals, and the few libc
 * functions the binding needs. The C declaration is the definition; the
 * signature is checked against its arity when this file compiles, so a
 * binding with an argument too many or too few does not build, and a call
 * with arguments in the wrong order or of the wrong type does not either.
 *
 * Pointers the binding decodes itself are declared `void *` so they arrive as
 * BigInt addresses ({@linkcode Pointer}): sockaddr, argv, body, negotiate's
 * output words, and the C strings, whose raw bytes `rawargs` offers (they
 * need not be UTF-8).
 *
 * @module
 */

/** A C pointer as koffi 3 passes it to JS: its address. */
export type Pointer = bigint;

/** `struct smfiDesc` as koffi takes it: the callbacks are registered function pointers or NULL. */
export interface SmfiDesc {
  readonly xxfi_name: string;
  readonly xxfi_version: number;
  readonly xxfi_flags: number;
  readonly [callback: `xxfi_${string}`]: Pointer | string | number | null;
}

/** `struct rlimit` as koffi reads and writes it. */
export interface Rlimit {
  rlim_cur: number | bigint;
  rlim_max: number | bigint;
}

/** The parameters of a C prototype string, one `unknown` each: `"int f(int a, char *b)"` gives `[unknown, unknown]`. */
type ParamList<S extends string> = S extends `${string}(${infer P})` ? (P extends "" | "void" ? [] : Split<P>) : never;
type Split<P extends string, Acc extends unknown[] = []> = P extends `${string},${infer Rest}`
  ? Split<Rest, [...Acc, unknown]>
  : [...Acc, unknown];

/**
 * Whether signature `F` takes as many parameters as prototype `S` declares;
 * a signature with a rest parameter matches a variadic prototype (`...`).
 */
export type ArityMatches<F extends (...args: never[]) => unknown, S extends string> = number extends
  Parameters<F>["length"] ? (S extends `${string}...)` ? true : false)
  : Parameters<F>["length"] extends ParamList<S>["length"] ? true
  : false;

/** A C prototype, and as its type the TypeScript signature of its binding. */
export interface Declared<F> {
  /** The C declaration, as koffi parses it. */
  readonly c: string;
  /** Type only: the binding's signature. */
  readonly signature?: F;
}

/**
 * Declares the C prototype `c` with the TypeScript signature `F`:
 * `declare<(fd: number) => number>()("int close(int fd)")`. A signature whose
 * arity differs from the prototype's is a compile error at the declaration.
 */
export function declare<F extends (...args: never[]) => unknown>(): <const S extends string>(
  c: S & (ArityMatches<F, S> extends true ? unknown : { readonly arityMismatch: never }),
) => Declared<F> {
  return (c) => ({ c });
}

/** The TypeScript signatures of a table of declarations. */
export type Signatures<T> = { [K in keyof T]: T[K] extends Declared<infer F> ? F : never };

/** Binds every declaration of `table` in `lib` (a koffi library); throws when one is missing. */
export function bindAll<T extends Record<string, Declared<unknown>>>(
  lib: { func(c: string): unknown },
  table: T,
): Signatures<T> {
  const out: Record<string, unknown> = {};
  for (const [name, declared] of Object.entries(table)) out[name] = lib.func(declared.c);
  return out as Signatures<T>;
}

/** The number of parameters prototype `c` declares (`...` counts as one), as {@linkcode ArityMatches} counts them. */
export function declaredArity(c: string): number {
  const params = c.slice(c.indexOf("(") + 1, c.lastIndexOf(")")).trim();
  return params === "" || params === "void" ? 0 : params.split(",").length;
}

type Ctx = Pointer;
/** `N` values of type `T`. */
type Tuple<T, N extends number, Acc extends T[] = []> = Acc["length"] extends N ? Acc : Tuple<T, N, [...Acc, T]>;
/** What a callback answers: an `sfsistat`. */
type Sfsistat = number;

/**
 * The `xxfi_*` callback prototypes, in `struct smfiDesc` order, each with
 * the signature of the JS function that handles it. `size_t` and
 * `unsigned long` arguments reach the handler as numbers (`ffi/load.ts`
 * converts them).
 */
export const CALLBACK_PROTOTYPES = {
  xxfi_connect: declare<(ctx: Ctx, hostname: Pointer | null, hostaddr: Pointer | null) => Sfsistat>()(
    "int xxfi_connect(SMFICTX *ctx, void *hostname, void *hostaddr)",
  ),
  xxfi_helo: declare<(ctx: Ctx, helohost: Pointer | null) => Sfsistat>()(
    "int xxfi_helo(SMFICTX *ctx, void *helohost)",
  ),
  xxfi_envfrom: declare<(ctx: Ctx, argv: Pointer | null) => Sfsistat>()(
    "int xxfi_envfrom(SMFICTX *ctx, void *argv)",
  ),
  xxfi_envrcpt: declare<(ctx: Ctx, argv: Pointer | null) => Sfsistat>()(
    "int xxfi_envrcpt(SMFICTX *ctx, void *argv)",
  ),
  xxfi_header: declare<(ctx: Ctx, headerf: Pointer | null, headerv: Pointer | null) => Sfsistat>()(
    "int xxfi_header(SMFICTX *ctx, void *headerf, void *headerv)",
  ),
  xxfi_eoh: declare<(ctx: Ctx) => Sfsistat>()("int xxfi_eoh(SMFICTX *ctx)"),
  xxfi_body: declare<(ctx: Ctx, bodyp: Pointer | null, len: number) => Sfsistat>()(
    "int xxfi_body(SMFICTX *ctx, void *bodyp, size_t len)",
  ),
  xxfi_eom: declare<(ctx: Ctx) => Sfsistat>()("int xxfi_eom(SMFICTX *ctx)"),
  xxfi_abort: declare<(ctx: Ctx) => Sfsistat>()("int xxfi_abort(SMFICTX *ctx)"),
  xxfi_close: declare<(ctx: Ctx) => Sfsistat>()("int xxfi_close(SMFICTX *ctx)"),
  xxfi_unknown: declare<(ctx: Ctx, arg: Pointer | null) => Sfsistat>()(
    "int xxfi_unknown(SMFICTX *ctx, void *arg)",
  ),
  xxfi_data: declare<(ctx: Ctx) => Sfsistat>()("int xxfi_data(SMFICTX *ctx)"),
  xxfi_negotiate: declare<
    (
      ctx: Ctx,
      f0: number,
      f1: number,
      f2: number,
      f3: number,
      pf0: Pointer,
      pf1: Pointer,
      pf2: Pointer,
      pf3: Pointer,
    ) => Sfsistat
  >()(
    "int xxfi_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3, void *pf0, void *pf1, void *pf2, void *pf3)",
  ),
};

export type CallbackSymbol = keyof typeof CALLBACK_PROTOTYPES;

/**
 * The callbacks in `struct smfiDesc` order: a callback's position here is its
 * index in `milter_shim_wrap`'s arrays and the shim's `CB_*`
 * (`test/contract.test.ts` checks them against `ffi/shim/milter_shim.c`).
 */
export const CALLBACK_SYMBOLS: readonly CallbackSymbol[] = Object.keys(CALLBACK_PROTOTYPES) as CallbackSymbol[];

/**
 * The JS function that handles callback `K`: libmilter's arguments, then the
 * token of this call. Through the native shim the token identifies the call
 * for an answer given later (`Later.reply`); without the shim it is `-1`, and
 * the answer must be the return value.
 */
export type CallbackHandler<K extends CallbackSymbol> = (
  ...args: [...Parameters<Signatures<typeof CALLBACK_PROTOTYPES>[K]>, token: number]
) => number;

/** A handler for each callback the filter registers. */
export type CallbackHandlers = { readonly [K in CallbackSymbol]?: CallbackHandler<K> };

/** The `smfi_*` functions every usable libmilter has (8.13 and later). */
export const FUNCTION_PROTOTYPES = {
  smfi_register: declare<(descr: SmfiDesc) => number>()("int smfi_register(smfiDesc descr)"),
  smfi_setconn: declare<(oconn: string) => number>()("int smfi_setconn(const char *oconn)"),
  smfi_settimeout: declare<(otimeout: number) => number>()("int smfi_settimeout(int otimeout)"),
  smfi_setbacklog: declare<(obacklog: number) => number>()("int smfi_setbacklog(int obacklog)"),
  smfi_setdbg: declare<(level: number) => number>()("int smfi_setdbg(int level)"),
  smfi_opensocket: declare<(rmsocket: boolean) => number>()("int smfi_opensocket(bool rmsocket)"),
  smfi_main: declare<() => number>()("int smfi_main()"),
  smfi_stop: declare<() => number>()("int smfi_stop()"),
  smfi_getsymval: declare<(ctx: Ctx, symname: string) => string | null>()(
    "const char *smfi_getsymval(SMFICTX *ctx, const char *symname)",
  ),
  smfi_setreply: declare<(ctx: Ctx, rcode: string, xcode: string | null, message: string | null) => number>()(
    "int smfi_setreply(SMFICTX *ctx, const char *rcode, const char *xcode, const char *message)",
  ),
  smfi_addheader: declare<(ctx: Ctx, headerf: string, headerv: string) => number>()(
    "int smfi_addheader(SMFICTX *ctx, const char *headerf, const char *headerv)",
  ),
  smfi_chgheader: declare<(ctx: Ctx, headerf: string, hdridx: number, headerv: string | null) => number>()(
    "int smfi_chgheader(SMFICTX *ctx, const char *headerf, int hdridx, const char *headerv)",
  ),
  smfi_addrcpt: declare<(ctx: Ctx, rcpt: string) => number>()("int smfi_addrcpt(SMFICTX *ctx, const char *rcpt)"),
  smfi_delrcpt: declare<(ctx: Ctx, rcpt: string) => number>()("int smfi_delrcpt(SMFICTX *ctx, const char *rcpt)"),
  smfi_replacebody: declare<(ctx: Ctx, bodyp: Uint8Array, bodylen: number) => number>()(
    "int smfi_replacebody(SMFICTX *ctx, const uint8_t *bodyp, int bodylen)",
  ),
  smfi_progress: declare<(ctx: Ctx) => number>()("int smfi_progress(SMFICTX *ctx)"),
  smfi_quarantine: declare<(ctx: Ctx, reason: string) => number>()(
    "int smfi_quarantine(SMFICTX *ctx, const char *reason)",
  ),
};

export type FunctionSymbol = keyof typeof FUNCTION_PROTOTYPES;

/**
 * The `smfi_*` functions a libmilter build may lack (added in 8.14, or left
 * out of a trimmed build). Each is bound where present; calling one that is
 * missing raises an error naming it, and the rest of the library works.
 * `smfi_setmlreply` is variadic (NULL-terminated).
 */
export const OPTIONAL_PROTOTYPES = {
  smfi_version: declare<(major: number[], minor: number[], pl: number[]) => number>()(
    "int smfi_version(_Out_ unsigned int *major, _Out_ unsigned int *minor, _Out_ unsigned int *pl)",
  ),
  smfi_setmaxdatasize: declare<(sz: number) => number | bigint>()("size_t smfi_setmaxdatasize(size_t sz)"),
  smfi_setmlreply: declare<(ctx: Ctx, rcode: string, xcode: string | null, ...lines: (string | null)[]) => number>()(
    "int smfi_setmlreply(SMFICTX *ctx, const char *rcode, const char *xcode, ...)",
  ),
  // The same C function with its 32 lines and NULL terminator as fixed
  // parameters: koffi passes at most 64 JS arguments, too few for 32 lines
  // as variadic (type, value) pairs. Only used where the variadic and fixed
  // calling conventions agree for pointer arguments; see ffi/setmlreply.ts.
  smfi_setmlreply_fixed: declare<
    (
      ctx: Ctx,
      rcode: string,
      xcode: string | null,
      ...slots: Tuple<string | null, 33>
    ) => number
  >()(
    "int smfi_setmlreply(SMFICTX *ctx, const char *rcode, const char *xcode, const char *l1, const char *l2, const char *l3, const char *l4, const char *l5, const char *l6, const char *l7, const char *l8, const char *l9, const char *l10, const char *l11, const char *l12, const char *l13, const char *l14, const char *l15, const char *l16, const char *l17, const char *l18, const char *l19, const char *l20, const char *l21, const char *l22, const char *l23, const char *l24, const char *l25, const char *l26, const char *l27, const char *l28, const char *l29, const char *l30, const char *l31, const char *l32, const char *end)",
  ),
  smfi_insheader: declare<(ctx: Ctx, hdridx: number, headerf: string, headerv: string) => number>()(
    "int smfi_insheader(SMFICTX *ctx, int hdridx, const char *headerf, const char *headerv)",
  ),
  smfi_chgfrom: declare<(ctx: Ctx, mail: string, args: string | null) => number>()(
    "int smfi_chgfrom(SMFICTX *ctx, const char *mail, const char *args)",
  ),
  smfi_addrcpt_par: declare<(ctx: Ctx, rcpt: string, args: string | null) => number>()(
    "int smfi_addrcpt_par(SMFICTX *ctx, const char *rcpt, const char *args)",
  ),
  smfi_setsymlist: declare<(ctx: Ctx, stage: number, macros: string) => number>()(
    "int smfi_setsymlist(SMFICTX *ctx, int stage, const char *macros)",
  ),
};

export type OptionalSymbol = keyof typeof OPTIONAL_PROTOTYPES;

/**
 * libmilter internals that are exported but not part of its API, bound only
 * where present: `mi_stop()` reads the stop state (0 = running), which
 * libmilter's own signal thread may set without the binding knowing.
 */
export const INTERNAL_PROTOTYPES = {
  mi_stop: declare<() => number>()("int mi_stop()"),
};

export type InternalSymbol = keyof typeof INTERNAL_PROTOTYPES;

/**
 * libc functions reached through libmilter's own dependency on libc (dlsym
 * searches a library's dependencies), used by `ffi/libc.ts`. Each is `null`
 * where the C library lacks it (e.g. dlopen before glibc 2.34).
 */
export const LIBC_PROTOTYPES = {
  getrlimit: declare<(resource: number, rlim: Rlimit) => number>()("int getrlimit(int resource, _Out_ rlimit *rlim)"),
  setrlimit: declare<(resource: number, rlim: Rlimit) => number>()(
    "int setrlimit(int resource, const rlimit *rlim)",
  ),
  fcntl: declare<(fd: number, cmd: number, ...args: unknown[]) => number>()("int fcntl(int fd, int cmd, ...)"),
  strlen: declare<(s: Pointer) => number | bigint>()("size_t strlen(const void *s)"),
  getsockopt: declare<(fd: number, level: number, name: number, value: number[], len: number[]) => number>()(
    "int getsockopt(int fd, int level, int name, _Out_ int *value, _Inout_ uint32_t *len)",
  ),
  setsockopt: declare<(fd: number, level: number, name: number, value: number[], len: number) => number>()(
    "int setsockopt(int fd, int level, int name, const int *value, uint32_t len)",
  ),
  getsockname: declare<(fd: number, addr: Uint8Array, len: number[]) => number>()(
    "int getsockname(int fd, void *addr, _Inout_ uint32_t *len)",
  ),
};

export type LibcSymbol = keyof typeof LIBC_PROTOTYPES;
