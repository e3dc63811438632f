#!/usr/bin/env bash
# docs/examples.sh: run every example shown in README.md and docs/*.md, so
# that what the documentation says a command prints is what it prints.
#
#   docs/examples.sh --check   run them; fail with a diff where a block differs
#                              (what .ci/run does, after the tests)
#   docs/examples.sh --write   run them and rewrite the blocks
#
# A block is everything between a pair of markers in a Markdown file:
#
#   <!-- example: NAME -->
#   ...written by the function ex_NAME below; do not edit by hand...
#   <!-- /example -->
#
# Every example runs against a real echod on loopback (127.0.0.1 only, no
# other network), started here on a free port; small broken servers, where
# an example needs one, are socat one-liners on other free ports. Each
# command runs under `timeout`, so a hung example fails instead of hanging.
# The binary is $ECHOD, by default target/debug/echod (build it first).
#
# What a reader sees, and what changes from run to run:
#
# - Ports. The blocks show the ports a reader would use: 7007 for the echo
#   server, 7999 for a port where nothing listens, 7010 to 7012 for the
#   broken servers. The script runs each command with the real free port
#   in their place and writes the output back with the same substitution,
#   so every line is the real line with only the port number changed.
# - Log lines start with a UTC timestamp. The examples show the server's
#   log with `cut -d' ' -f2-`, which drops it: that is what the command
#   prints, and what a reader typing it sees.
# - Timings (round-trip times, durations, rates, latencies), client port
#   numbers (5 digits on Linux), and amounts that depend on the kernel's
#   buffers differ on every run. --write records the real values of one
#   run; --check compares after masking those fields (see `mask`) in both
#   the file and the fresh output, so a block fails the check only when a
#   word, a byte count or a line changed, not when the machine was slower.
#   Which readiness events a poll returns depends on timing too (whether
#   nc's bytes arrive before or after the server's first poll), so the
#   trace's `poll returned` and connection token lines are left out of the
#   comparison: the trace block shows one real run.

set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
  --check | --write) ;;
  *)
    echo "usage: docs/examples.sh --check | --write" >&2
    exit 2
    ;;
esac

ECHOD=${ECHOD:-target/debug/echod}
if [[ ! -x $ECHOD ]]; then
  echo "docs/examples.sh: no echod binary at $ECHOD; run 'cargo build' first, or set ECHOD=path/to/echod" >&2
  exit 2
fi
for tool in nc socat timeout; do
  if ! command -v "$tool" >/dev/null; then
    echo "docs/examples.sh: the examples need '$tool' (Debian: netcat-openbsd, socat, coreutils); install it and run again" >&2
    exit 2
  fi
done

# The examples run in a scratch directory, with `echod` on PATH meaning the
# binary under test, so commands read exactly as a user types them.
repo=$PWD
work=$(mktemp -d)
mkdir -p "$work/bin" "$work/out" "$work/run"
ln -s "$(cd "$(dirname "$ECHOD")" && pwd)/$(basename "$ECHOD")" "$work/bin/echod"
export PATH="$work/bin:$PATH"

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Seconds any one command may take. The slowest (echod check) takes about
# 5 s on a busy 2-core machine.
limit=60

# shown port -> real port, for the example being written.
declare -A ports=()

# The real port a server started with `-p 0` printed in its log.
port_from_log() {
  local log=$1 i
  for ((i = 0; i < 100; i++)); do
    if grep -qE 'listening on tcp 127\.0\.0\.1:[0-9]+' "$log" 2>/dev/null; then
      grep -oE 'listening on tcp 127\.0\.0\.1:[0-9]+' "$log" | head -n1 | sed -E 's/.*://'
      return 0
    fi
    sleep 0.1
  done
  echo "docs/examples.sh: the server did not say where it listens within 10 s; its log:" >&2
  cat "$log" >&2
  return 1
}

# A port nothing listens on: one echod picked and let go of again.
free_port() {
  local log port pid
  log=$(mktemp -p "$work")
  echod -p 0 -b 127.0.0.1 --no-udp 2>"$log" &
  pid=$!
  port=$(port_from_log "$log")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$port"
}

# Start echod in the background with ARGS plus `-p 0 -b 127.0.0.1`, log
# to FILE; map 7007 to its port. Sets $server.
start_echod() {
  local log=$1
  shift
  echod "$@" -p 0 -b 127.0.0.1 2>"$log" &
  server=$!
  pids+=("$server")
  ports[7007]=$(port_from_log "$log")
}

# A socat server on a free port, shown as SHOWN; ADDRESS2 is socat's second
# address (what it does with the bytes).
start_socat() {
  local shown=$1 what=$2 port
  port=$(free_port)
  socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "$what" 2>/dev/null &
  pids+=("$!")
  ports[$shown]=$port
  # Wait until it accepts (bounded).
  local i
  for ((i = 0; i < 50; i++)); do
    if nc -z 127.0.0.1 "$port" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "docs/examples.sh: socat did not start listening on $port" >&2
  return 1
}

# The shown ports replaced by the real ones (to run), or back (to show).
to_real() {
  local text=$1 shown
  for shown in "${!ports[@]}"; do
    text=$(sed -E "s/(:| )$shown\b/\1${ports[$shown]}/g" <<<"$text")
  done
  printf '%s' "$text"
}
to_shown() {
  local script=() shown
  for shown in "${!ports[@]}"; do
    script+=(-e "s/(:| |port=)${ports[$shown]}\b/\1$shown/g")
  done
  if ((${#script[@]})); then sed -E "${script[@]}"; else cat; fi
}

# Show `$ CMD` and what it prints (stdout and stderr, in the order written).
show() {
  local cmd=$1
  printf '$ %s\n' "$cmd"
  (cd "$work/run" && timeout "$limit" bash -c "$(to_real "$cmd")" 2>&1) | to_shown || true
}

# Stop a server started here, as `kill %1; wait` does, and forget it.
stop() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Show `$ CMD` that the script carries out itself (starting or stopping a
# background server), so that a reader sees the command to type.
say() {
  printf '$ %s\n' "$1"
}

# --- the examples ------------------------------------------------------------
# Each prints the body of its block, fences included.

ex_quick_start() {
  echo '```console'
  say 'echod -v -p 7007 -b 127.0.0.1 2> echod.log &'
  start_echod echod.log -v
  show "printf 'hello\n' | nc -N 127.0.0.1 7007"
  show "printf 'over udp\n' | nc -u -w1 127.0.0.1 7007"
  say 'kill %1; wait'
  stop "$server"
  show "grep -v 'buffer\\|open-files\\|serving at most' echod.log | cut -d' ' -f2-"
  echo '```'
}

ex_client() {
  echo '```console'
  show 'echo "Hello, echo" | echod client 127.0.0.1:7007'
  show 'head -c 10000000 /dev/urandom > big.bin'
  show 'echod client 127.0.0.1:7007 < big.bin | cmp - big.bin && echo identical'
  show 'echod client 127.0.0.1:7999 < big.bin; echo "exit $?"'
  show 'echod client "[::1" < /dev/null; echo "exit $?"'
  echo '```'
}

ex_client_errors() {
  echo '```console'
  show 'printf "bananas\n" | echod client 127.0.0.1:7010; echo "exit $?"'
  show 'head -c 5000 big.bin | echod client 127.0.0.1:7011 > /dev/null; echo "exit $?"'
  echo '```'
}

ex_client_pipe() {
  echo '```console'
  show 'yes | head -c 1000000 | echod client 127.0.0.1:7007 | head -n 2; echo "exit ${PIPESTATUS[2]}"'
  echo '```'
}

ex_client_udp() {
  echo '```console'
  show 'head -c 20000 big.bin | echod client --udp -s 1000 127.0.0.1:7007 | cmp - <(head -c 20000 big.bin) && echo identical'
  show 'head -c 5000 big.bin | echod client --udp --retries 0 -W 200ms 127.0.0.1:7999 > /dev/null; echo "exit $?"'
  echo '```'
}

ex_client_interactive() {
  echo '```console'
  show 'printf "first line\nsecond line\nQ\nnot sent\n" | echod client -i 127.0.0.1:7007'
  echo '```'
}

ex_ping() {
  echo '```console'
  show 'echod ping -c 3 -i 0.2 127.0.0.1:7007'
  echo '```'
}

ex_ping_more() {
  echo '```console'
  show 'echod ping --udp -c 3 -i 0.2 -s 1400 127.0.0.1:7007'
  show 'echod ping --connect-each -c 3 -i 0.2 127.0.0.1:7007'
  echo '```'
}

ex_ping_errors() {
  echo '```console'
  show 'echod ping -c 3 -i 0.2 127.0.0.1:7012; echo "exit $?"'
  show 'echod ping -c 2 -i 0.2 127.0.0.1:7999; echo "exit $?"'
  echo '```'
}

ex_bench() {
  echo '```console'
  show 'echod bench -c 10 -d 1 --warmup 0.5 127.0.0.1:7007 2>/dev/null'
  echo '```'
}

ex_bench_reconnect() {
  echo '```console'
  show 'echod bench --reconnect 1 -c 4 -d 1 --warmup 0.5 127.0.0.1:7007 2>/dev/null'
  echo '```'
}

ex_bench_json() {
  echo '```console'
  show 'echod bench --json -d 1 --warmup 0.5 127.0.0.1:7007'
  echo '```'
}

ex_check() {
  echo '```console'
  show 'echod check 127.0.0.1:7007'
  show 'echod check --udp 127.0.0.1:7007'
  echo '```'
}

ex_generate() {
  echo '```console'
  show 'mkdir -p man && echod generate man --dir man'
  show 'echod generate zsh > _echod && head -n 1 _echod'
  echo '```'
}

ex_generate_more() {
  echo '```console'
  show 'echod generate --help'
  echo '```'
}

ex_nc() {
  echo '```console'
  show 'printf "Hello, echo\n" | nc -N 127.0.0.1 7007'
  show 'printf "over udp\n" | socat - UDP:127.0.0.1:7007'
  show 'printf "bananas\n" | nc -N 127.0.0.1 7010; echo "exit $?"'
  show 'nc -N 127.0.0.1 7011 < big.bin | wc -c; echo "exit ${PIPESTATUS[0]}"'
  echo '```'
}

ex_trace() {
  echo '```console'
  say 'echod --trace-events --no-udp -p 7007 -b 127.0.0.1 2> trace.log &'
  start_echod trace.log --trace-events --no-udp
  show "printf 'hello\n' | nc -N 127.0.0.1 7007"
  say 'kill %1; wait'
  stop "$server"
  show "grep -v 'mio::poll\\|buffer\\|open-files\\|serving at most' trace.log | cut -d' ' -f2-"
  echo '```'
}

ex_usage_error() {
  echo '```console'
  show 'echod --grace 86401; echo "exit $?"'
  echo '```'
}

ex_guard() {
  echo '```console'
  say 'echod -v --udp-rate 1 --limit-loopback -p 7007 -b 127.0.0.1 2> guard.log &'
  start_echod guard.log -v --udp-rate 1 --limit-loopback
  show 'echod ping --udp -c 3 -i 0 -W 100ms 127.0.0.1:7007; echo "exit $?"'
  say 'kill %1; wait'
  stop "$server"
  show "grep 'server::udp' guard.log | cut -d' ' -f2-"
  echo '```'
}

ex_counters() {
  echo '```console'
  say 'echod -p 7007 -b 127.0.0.1 2> counters.log &'
  start_echod counters.log
  show "printf 'hi\n' | nc -N 127.0.0.1 7007"
  show "printf 'hi\n' | nc -u -w1 127.0.0.1 7007"
  say 'kill -USR1 %1'
  kill -USR1 "$server"
  sleep 0.5
  show "tail -n 1 counters.log | cut -d' ' -f2-"
  stop "$server"
  echo '```'
}

ex_shutdown() {
  echo '```console'
  say 'echod --grace 1 -p 7007 -b 127.0.0.1 2> shutdown.log &'
  start_echod shutdown.log --grace 1
  say "(printf 'hi\n'; sleep 5) | nc -N 127.0.0.1 7007 &"
  ( (printf 'hi\n'; sleep 5) | timeout 10 nc -N 127.0.0.1 "${ports[7007]}" >/dev/null 2>&1 ) &
  local client=$!
  sleep 0.5
  say 'kill %1; wait %1; echo "exit $?"'
  kill -TERM "$server"
  local status=0
  wait "$server" || status=$?
  echo "exit $status"
  wait "$client" 2>/dev/null || true
  show "grep 'SIGTERM\|grace\|complete' shutdown.log | cut -d' ' -f2-"
  echo '```'
}

# --- running them, writing or checking the blocks ---------------------------

# Fields that change from run to run, masked before comparing (--check).
mask() {
  sed -E \
    -e 's/[0-9][0-9.,\/]*( ?)(ms|s|µs)\b/#\1\2/g' \
    -e 's/127\.0\.0\.1:[0-9]{5}\b/127.0.0.1:#####/g' \
    -e 's/[0-9]+\.[0-9]+ (MiB|KiB|MB)/# \1/g' \
    -e '/^TRACE \[[a-z_:]+\] (poll returned|token 0 )/d' \
    -e '/messages\/s|^  (measured|rate|latency|connects) |^\{"/s/[0-9][0-9.]*/#/g'
}

# GitHub's anchor for a heading: lower case, punctuation dropped, spaces
# to hyphens.
anchors() {
  grep -E '^#{1,6} ' "$1" | sed -E 's/^#+ +//' | tr 'A-Z' 'a-z' |
    sed -E 's/[^a-z0-9 _-]//g; s/ /-/g'
}

# Every relative link between README.md and docs/*.md names a file that
# exists and, after '#', a heading that file has.
check_links() {
  local file link target anchor dir bad=0
  for file in "$@"; do
    dir=$(dirname "$file")
    while IFS= read -r link; do
      target=${link%%#*}
      anchor=
      [[ $link == *"#"* ]] && anchor=${link#*#}
      if [[ -z $target ]]; then target=$file; else target=$dir/$target; fi
      if [[ ! -e $target ]]; then
        echo "$file: the link to '$link' names no file" >&2
        bad=1
      elif [[ -n $anchor ]] && ! anchors "$target" | grep -qxF -- "$anchor"; then
        echo "$file: the link to '$link' names no heading of $target" >&2
        bad=1
      fi
    done < <(grep -oE '\]\([^)]+\)' "$file" | sed -E 's/^\]\(//; s/\)$//' | grep -vE '^[a-z]+:')
  done
  return "$bad"
}

# The echo server most examples talk to, shown as 7007, and the broken
# servers of docs/tools.md, each a socat one-liner.
cd "$work/run"
start_echod "$work/server.log"
main_port=${ports[7007]}
start_socat 7010 'SYSTEM:tr a b'
start_socat 7011 'SYSTEM:head -c 1000; cat >/dev/null'
start_socat 7012 'SYSTEM:stdbuf -o0 tr a b'
head -c 10000000 /dev/urandom >big.bin
declare -A fixed=()
for shown in "${!ports[@]}"; do fixed[$shown]=${ports[$shown]}; done

names=$(declare -F | awk '{print $3}' | sed -n 's/^ex_//p')
for name in $names; do
  ports=()
  for shown in "${!fixed[@]}"; do ports[$shown]=${fixed[$shown]}; done
  "ex_$name" >"$work/out/$name"
done
cd "$repo"

files=(README.md docs/*.md)
status=0
used=" "
for file in "${files[@]}"; do
  new=$work/new.md
  # Replace each block's body by the example's fresh output.
  if ! awk -v dir="$work/out" -v file="$file" '
    /^<!-- example: [a-z_]+ -->$/ {
      print
      name = $3
      path = dir "/" name
      if ((getline line < path) <= 0) {
        printf "%s: no example called %s in docs/examples.sh\n", file, name > "/dev/stderr"
        exit 1
      }
      do print line; while ((getline line < path) > 0)
      close(path)
      inside = 1
      next
    }
    /^<!-- \/example -->$/ { inside = 0 }
    !inside { print }
  ' "$file" >"$new"; then
    exit 1
  fi
  used+=$(sed -nE 's/^<!-- example: ([a-z_]+) -->$/\1/p' "$file" | tr '\n' ' ')
  if [[ $mode == --write ]]; then
    cmp -s "$file" "$new" || cp "$new" "$file"
  elif ! diff -u --label "$file (as written)" --label "$file (as run now, masked)" \
    <(mask <"$file") <(mask <"$new"); then
    status=1
  fi
done

for name in $names; do
  if [[ $used != *" $name "* ]]; then
    echo "docs/examples.sh: example '$name' is shown nowhere; add its markers to a page or remove it" >&2
    status=1
  fi
done

check_links "${files[@]}" || status=1

if ((status)); then
  echo "docs/examples.sh: see above: a block that differs from what its commands print now (run docs/examples.sh --write and review the change), or a link to a missing file or heading" >&2
fi
exit "$status"
