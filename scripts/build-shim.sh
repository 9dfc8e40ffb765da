#!/bin/sh
# Builds the native shim, ffi/shim/milter_shim.c, for every platform the
# package ships it prebuilt for:
#
#   ffi/shim/prebuilt/linux-x64-gnu/libmilter_shim.so    gcc                    glibc >= 2.2.5 symbols (pthread_cond_*: 2.3.2)
#   ffi/shim/prebuilt/linux-arm64-gnu/libmilter_shim.so  aarch64-linux-gnu-gcc  glibc >= 2.17 symbols
#   ffi/shim/prebuilt/linux-x64-musl/libmilter_shim.so   musl-gcc
#
# Usage:
#   sh scripts/build-shim.sh           build in place (commit the results)
#   sh scripts/build-shim.sh --check   build into a temporary directory and
#                                      verify both those objects and the
#                                      committed ones; exits non-zero, saying
#                                      what is wrong, when an object has the
#                                      wrong machine, exports, dependencies
#                                      or glibc symbol versions, or when a
#                                      committed object differs from a fresh
#                                      build (stale: rebuild and commit).
#
# Needs (Debian 12): gcc, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
# musl-tools, and binutils (readelf, strip), which gcc brings.
#
# The objects are reproducible: no build ID, no source paths (the build runs
# from the repository root on a relative path, with -ffile-prefix-map for
# good measure), stripped, and without the .comment section that names the
# exact compiler package. The same compilers give byte-identical files
# wherever the checkout lives.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SOURCE=ffi/shim/milter_shim.c
PREBUILT=ffi/shim/prebuilt
LIB=libmilter_shim.so
# Every symbol the object exports; keep in step with MILTER_SHIM_EXPORT in
# the source. The version script hides everything else (musl's crti.o would
# otherwise export _init and _fini).
EXPORTS="milter_shim_abi milter_shim_start_main milter_shim_wrap milter_shim_reply milter_shim_pending milter_shim_bind_writes milter_shim_post milter_shim_bind_pipeline milter_shim_pipeline milter_shim_take_batch milter_shim_done_batch milter_shim_symval milter_shim_pipeline_stat milter_shim_run_milter milter_shim_run_listener milter_shim_exit milter_shim_negotiate_itself milter_shim_generation milter_shim_stamp milter_shim_live milter_shim_refuse_new milter_shim_admitted"
# target  compiler  strip  glibc base version ("-" for musl)  ELF machine  libc NEEDED
TARGETS="linux-x64-gnu gcc strip GLIBC_2.2.5 X86-64 libc.so.6
linux-arm64-gnu aarch64-linux-gnu-gcc aarch64-linux-gnu-strip GLIBC_2.17 AArch64 libc.so.6
linux-x64-musl musl-gcc strip - X86-64 libc.so"

CFLAGS="-std=gnu11 -O2 -fPIC -Wall -Wextra -Werror -fvisibility=hidden -ffile-prefix-map=$ROOT=."
LDFLAGS="-shared -Wl,--build-id=none -Wl,-soname,$LIB -Wl,-z,noexecstack -Wl,-z,relro -Wl,-z,now"

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *)
    echo "usage: sh scripts/build-shim.sh [--check]" >&2
    exit 64
    ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/milter-shim.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

{
  echo "{"
  echo "  global:"
  for sym in $EXPORTS; do echo "    $sym;"; done
  echo "  local: *;"
  echo "};"
} >"$work/exports.map"

missing=""
for tool in gcc strip readelf aarch64-linux-gnu-gcc aarch64-linux-gnu-strip musl-gcc; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
  echo "build-shim: missing tools:$missing" >&2
  echo "build-shim: on Debian/Ubuntu: apt-get install gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross musl-tools" >&2
  exit 1
fi

# build <target> <cc> <strip> <glibc base> <output file>
build() {
  if [ "$4" = - ]; then define=""; else define="-DSHIM_GLIBC_BASE=\"$4\""; fi
  mkdir -p "$(dirname "$5")"
  # shellcheck disable=SC2086 # word splitting of the flag lists is intended
  "$2" $CFLAGS $define $LDFLAGS -Wl,--version-script="$work/exports.map" -o "$5.tmp" "$SOURCE"
  "$3" --strip-all --remove-section=.comment "$5.tmp"
  mv "$5.tmp" "$5"
}

failures=0
fail() {
  echo "build-shim: $1" >&2
  failures=$((failures + 1))
}

# verify <object> <glibc base> <machine> <libc NEEDED>
# (POSIX sh has no local variables: the v_ prefix keeps these apart.)
verify() {
  v_obj=$1
  if [ ! -f "$v_obj" ]; then
    fail "$v_obj: missing"
    return
  fi
  v_machine=$(readelf -h "$v_obj" | sed -n 's/^ *Machine: *//p')
  case "$v_machine" in
    *"$3"*) ;;
    *) fail "$v_obj: ELF machine is '$v_machine', expected $3" ;;
  esac
  # Defined global or weak dynamic symbols (not UND, not local section symbols).
  v_exported=$(readelf -W --dyn-syms "$v_obj" | awk '$1 ~ /^[0-9]+:$/ && $5 != "LOCAL" && $7 != "UND" && $8 != "" { sub(/@.*/, "", $8); print $8 }' |
    sort | tr '\n' ' ' | sed 's/ $//')
  v_expected=$(echo "$EXPORTS" | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')
  [ "$v_exported" = "$v_expected" ] || fail "$v_obj: exports '$v_exported', expected exactly '$v_expected'"
  v_needed=$(readelf -d "$v_obj" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ' | sed 's/ $//')
  [ "$v_needed" = "$4" ] || fail "$v_obj: NEEDED '$v_needed', expected only '$4'"
  v_versions=$(readelf -W -V "$v_obj" | sed -n 's/.*Name: \(GLIBC_[0-9.]*\).*/\1/p' | sort -u)
  if [ "$2" = - ]; then
    [ -z "$v_versions" ] || fail "$v_obj: a musl object with glibc symbol versions: $v_versions"
  else
    # Every undefined symbol at the base version, except pthread_cond_*: at
    # GLIBC_2.3.2 where the base is older (x86-64), since the GLIBC_2.2.5
    # ones are the old, incompatible condition variables (see the source).
    v_cond=$(printf '%s\n%s\n' GLIBC_2.3.2 "$2" | sort -V | tail -n 1)
    v_bad=$(readelf -W --dyn-syms "$v_obj" | awk -v base="$2" -v cond="$v_cond" '
      $1 ~ /^[0-9]+:$/ && $7 == "UND" && $8 ~ /@/ {
        name = $8; sub(/@.*/, "", name); version = $8; sub(/^[^@]*@+/, "", version)
        want = name ~ /^pthread_cond_/ ? cond : base
        if (version != want) printf "%s@%s (expected %s) ", name, version, want
      }')
    [ -z "$v_bad" ] || fail "$v_obj: symbol versions: $v_bad(pin the symbol with .symver)"
    v_newest=$(printf '%s\n%s\n' "$v_versions" "$v_cond" | sed '/^$/d' | sort -V | tail -n 1)
    [ "$v_newest" = "$v_cond" ] || fail "$v_obj: needs $v_newest, newer than $v_cond (pin the symbol with .symver)"
  fi
  if readelf -W -l "$v_obj" | grep 'GNU_STACK' | grep -q 'RWE'; then
    fail "$v_obj: asks for an executable stack"
  fi
  if readelf -d "$v_obj" | grep -q TEXTREL; then fail "$v_obj: has text relocations"; fi
}

while read -r target cc strip base machine libc; do
  if $check; then out="$work/$target/$LIB"; else out="$PREBUILT/$target/$LIB"; fi
  build "$target" "$cc" "$strip" "$base" "$out"
  echo "built $out ($(wc -c <"$out") bytes)"
  if $check; then
    committed="$PREBUILT/$target/$LIB"
    verify "$out" "$base" "$machine" "$libc"
    verify "$committed" "$base" "$machine" "$libc"
    if [ -f "$committed" ] && ! cmp -s "$out" "$committed"; then
      fail "$committed differs from a fresh build of $SOURCE: run sh scripts/build-shim.sh and commit the result"
    fi
  fi
done <<EOF
$TARGETS
EOF

if ! $check; then exit 0; fi
if [ "$failures" -ne 0 ]; then
  echo "build-shim: $failures check(s) failed" >&2
  exit 1
fi
echo "build-shim: all objects verified: machine, exports ($EXPORTS), NEEDED libc only, symbol versions, reproducible"
