/**
 * The dynamic loader (`<dlfcn.h>`), bound through koffi: pinning a library in
 * memory, the address of a function in a library already loaded, and which C
 * library the process runs on. libmilter's loading and the shim's both use it.
 *
 * @module
 */

import koffi from "koffi";

/** <dlfcn.h> flags; glibc and musl agree on these values. */
const RTLD_NOW = 0x2;
const RTLD_NOLOAD = 0x4;
const RTLD_NODELETE = 0x1000;

interface Dl {
  readonly dlopen: (name: string, flags: number) => bigint | null;
  readonly dlsym: (handle: bigint | null, symbol: string) => bigint | null;
  readonly dlerror: () => string | null;
  /** Whether the process runs on glibc (`gnu_get_libc_version` exists), as opposed to musl. */
  readonly glibc: boolean;
}

let dl: Dl | null | undefined;

/** glibc's C library (on musl any `libc.*` name resolves to musl itself), then FreeBSD's. */
const LIBC_NAMES = ["libc.so.6", "libc.so.7"];

/**
 * libc's dynamic-loader functions, bound through koffi. glibc before 2.34
 * keeps `dlopen` and `dlsym` in `libdl.so.2` instead.
 */
function libdl(): Dl | null {
  if (dl !== undefined) return dl;
  dl = null;
  let libc;
  for (const name of LIBC_NAMES) {
    try {
      libc = koffi.load(name);
      break;
    } catch {
      continue;
    }
  }
  if (libc === undefined) return dl;
  let glibc = true;
  try {
    libc.func("const char *gnu_get_libc_version(void)");
  } catch {
    glibc = false;
  }
  for (const lib of [libc, "libdl.so.2"]) {
    try {
      const handle = typeof lib === "string" ? koffi.load(lib) : lib;
      dl = {
        dlopen: handle.func("void *dlopen(const char *filename, int flags)"),
        dlsym: handle.func("void *dlsym(void *handle, const char *symbol)"),
        dlerror: handle.func("const char *dlerror(void)"),
        glibc,
      };
      break;
    } catch {
      continue;
    }
  }
  return dl;
}

/** Whether the process runs on glibc, `false` on musl; `null` when libc's loader is out of reach. */
export function runsOnGlibc(): boolean | null {
  return libdl()?.glibc ?? null;
}

/**
 * Loads the library at `path` (or finds it loaded) and makes it impossible
 * to unload (`RTLD_NODELETE`): threads may sleep inside its code for the life
 * of the process, and a runtime that finalizes koffi's library handles at
 * exit (Deno does) would otherwise unmap that code under them.
 *
 * @returns `null` when pinned, otherwise why not (libc's loader out of reach, or dlerror's message).
 */
export function pinLibrary(path: string): string | null {
  const d = libdl();
  if (d === null) return "libc's dlopen is not reachable";
  return d.dlopen(path, RTLD_NOW | RTLD_NODELETE) ? null : d.dlerror() ?? "dlopen failed";
}

/**
 * The address of `symbol` in a library this process has already loaded
 * (`dlopen(libraryPath, RTLD_NOW | RTLD_NOLOAD)` and `dlsym`), as a BigInt
 * for C function-pointer parameters; `null` when the library is not loaded,
 * lacks the symbol, or the dynamic loader is out of reach. The library's
 * reference count goes up by one for good, so the address stays valid.
 *
 * @param libraryPath the name or path the library was loaded under, e.g. `"libmilter.so.1.0.1"`.
 * @param symbol the C name, e.g. `"smfi_main"`.
 */
export function functionAddress(libraryPath: string, symbol: string): bigint | null {
  const d = libdl();
  if (d === null) return null;
  const handle = d.dlopen(libraryPath, RTLD_NOW | RTLD_NOLOAD);
  if (!handle) return null;
  const address = d.dlsym(handle, symbol);
  return typeof address === "bigint" && address !== 0n ? address : null;
}
