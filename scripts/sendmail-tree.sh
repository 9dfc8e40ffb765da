#!/bin/sh
# A private Sendmail 8.17 for the end-to-end tests (test/mta/sendmail.ts),
# never installed: Debian's sendmail-bin conflicts with postfix, so its
# packages are downloaded with apt-get and extracted with dpkg-deb into
# .cache/sendmail/tree. The private copy of the binary loses its setgid bit, so
# that glibc honours LD_LIBRARY_PATH (the extracted libwrap.so.0). m4 comes from
# the same tree. Idempotent: once the tree is complete it only prints its path.
#
# Usage: scripts/sendmail-tree.sh   (prints the tree's absolute path)
# Needs apt-get and dpkg-deb (Debian, Ubuntu) and access to the package archive.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache/sendmail"
tree="$cache/tree"
packages="sendmail-bin sendmail-base sendmail-cf libwrap0 m4"

for tool in apt-get dpkg-deb flock; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "sendmail-tree: $tool not found: a private Sendmail needs Debian's apt-get and dpkg-deb" >&2
    exit 2
  }
done

mkdir -p "$cache"
exec 9>"$cache/lock" # test files may ask at the same time
flock 9

if [ ! -f "$tree/.complete" ]; then
  rm -rf "$cache/debs" "$tree" "$tree.new"
  mkdir -p "$cache/debs"
  # As root, apt-get would hand the download to its _apt user, which cannot write here.
  sandbox=""
  [ "$(id -u)" = 0 ] && sandbox="-o APT::Sandbox::User=root"
  # shellcheck disable=SC2086
  if ! (cd "$cache/debs" && apt-get -q $sandbox download $packages) >&2; then
    # A fresh machine may have no package lists yet.
    [ "$(id -u)" = 0 ] || {
      echo "sendmail-tree: apt-get download $packages failed (run apt-get update?)" >&2
      exit 1
    }
    apt-get update -q >&2
    # shellcheck disable=SC2086
    (cd "$cache/debs" && apt-get -q $sandbox download $packages) >&2
  fi
  for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$tree.new"; done
  bin="$tree.new/usr/libexec/sendmail/sendmail"
  [ -x "$bin" ] && [ -x "$tree.new/usr/bin/m4" ] && [ -f "$tree.new/usr/share/sendmail/cf/m4/cf.m4" ] || {
    echo "sendmail-tree: the extracted packages lack sendmail, m4 or cf.m4" >&2
    exit 1
  }
  chmod g-s "$bin"
  ls "$cache"/debs/*.deb | sed 's|.*/||' >"$tree.new/.complete"
  mv "$tree.new" "$tree"
fi
# The libraries it takes from the system (.ci/run installs them).
libwrap=$(dirname "$(find "$tree/usr/lib" -name libwrap.so.0 | head -n 1)")
missing=$(LD_LIBRARY_PATH="$libwrap" ldd "$tree/usr/libexec/sendmail/sendmail" | awk '/not found/ { print $1 }')
if [ -n "$missing" ]; then
  echo "sendmail-tree: the extracted sendmail needs libraries that are not installed:" $missing >&2
  exit 3
fi
echo "$tree"
