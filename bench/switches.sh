#!/usr/bin/env bash
# Context switches, futex calls and polls per message, system-wide, for the C
# filter and this project's filter under Node (synchronous, then with every
# callback async), at one concurrency over a unix socket: where the relay's
# cost shows. Needs perf (Debian: linux-perf), gcc, libmilter-dev. Bounded:
# about 30 s.
#
#   bench/switches.sh [concurrency, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
c=${1:-8}
dir=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
gcc -O2 -o "$dir/loadgen" bench/load/loadgen.c -lpthread
gcc -O2 -o "$dir/filter-c" bench/filters/filter.c -lmilter
events=context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_poll,syscalls:sys_enter_clone3,syscalls:sys_enter_mmap
for who in C node node-async; do
  sock="$dir/$who.sock"
  case $who in
    C) "$dir/filter-c" "unix:$sock" & ;;
    node) node --import tsx bench/filters/filter.ts "unix:$sock" & ;;
    node-async) node --import tsx bench/filters/filter.ts "unix:$sock" async & ;;
  esac
  pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  sleep 0.5
  "$dir/loadgen" "unix:$sock" "$c" 1024 0.5 4 > "$dir/out.json" &
  load=$!
  sleep 1.5
  perf stat -a -x, -e "$events" -o "$dir/perf.csv" -- sleep 2
  wait $load
  rate=$(grep -o '"rate":[0-9.]*' "$dir/out.json" | cut -d: -f2)
  messages=$(awk -v r="$rate" 'BEGIN { print r * 2 }')
  echo "$who, c=$c: $rate messages/s; per message:"
  awk -F, -v m="$messages" '/^[0-9]/ { printf "  %-32s %8.1f\n", $3, $1 / m }' "$dir/perf.csv"
  kill -9 $pid; wait $pid 2>/dev/null || true
done
