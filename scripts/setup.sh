#!/usr/bin/env bash
# Installs what a clone needs, on Debian or Ubuntu, then the npm packages:
#
#   bash scripts/setup.sh demo   libmilter only: enough for `npm run demo` and filters of your own
#   bash scripts/setup.sh test   everything `npm test` uses (what .ci/run installs)
#
# Debian packages need root: run as root, or with sudo available. Node >= 20
# and npm must be there already. Installs only what is missing; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-test}
# libmilter1.0.1: the library the binding loads.
packages=(libmilter1.0.1)
if [ "$what" = test ]; then
  # postfix: the MTA of the end-to-end tests, each of which runs its own
  # private instance; "No configuration" leaves the system's own Postfix
  # unconfigured. opendkim, opendkim-tools: a third-party milter (and its key
  # generator) that the milter-test CLI is tested against. systemd:
  # systemd-analyze checks the example unit file. gcc, libc6-dev,
  # gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, musl-tools:
  # scripts/build-shim.sh --check rebuilds the prebuilt native shim for each
  # target and compares; qemu-user-static runs the arm64 one
  # (test/shim.test.ts, which provisions the arm64 side itself through
  # scripts/arm64-sysroot.sh). libdb5.3, libldap-2.5-0, libnsl2, libsasl2-2,
  # libssl3: the libraries of the Sendmail that scripts/sendmail-tree.sh
  # extracts (never installed: sendmail-bin conflicts with postfix); mount:
  # its private /etc/hosts (test/mta/sendmail.test.ts). prometheus: promtool
  # checks the metrics endpoint's output (test/operations.test.ts); haproxy:
  # several filter processes behind one balancer (test/balanced.test.ts).
  packages+=(postfix opendkim opendkim-tools systemd prometheus haproxy
    gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross musl-tools qemu-user-static
    libdb5.3 libldap-2.5-0 libnsl2 libsasl2-2 libssl3 mount)
elif [ "$what" != demo ]; then
  echo "usage: bash scripts/setup.sh demo|test" >&2
  exit 64
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup: installing ${missing[*]} needs root (or sudo)" >&2; exit 1; }
    as_root=(sudo)
  fi
  echo "postfix postfix/main_mailer_type select No configuration" | "${as_root[@]}" debconf-set-selections
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

npm ci
