#!/usr/bin/env bash
# benches/run.sh: echod against a tokio current_thread echo, per core.
#
# What it does
#   1. Builds `echod` (release) and the reference server in
#      benches/reference-tokio (tokio current_thread, one task per
#      connection, io::copy).
#   2. Starts both on loopback, each pinned to CPU 0 (`taskset -c 0`);
#      echod runs with `-q --idle-timeout 0 --udp-rate 0`.
#   3. Drives every cell with `echod bench --json` pinned to CPU 1, the
#      servers alternating cell by cell, for ROUNDS rounds:
#        tcp  64 / 512 / 4096-byte messages x 1 / 50 / 500 connections
#             (one message in flight per connection: request/response);
#        stream  one connection, 64 KiB messages, 16 in flight;
#        udp  64-byte datagrams from 50 sockets, one in flight each
#      For each run it records the bench's JSON and the server's CPU time
#      (utime + stime from /proc/PID/stat) over a window inside the
#      measured period; "messages per server-CPU-second" is the bench's
#      message rate divided by the server's CPU rate over that window.
#   4. Syscalls per echoed message at 50 connections (both servers, each
#      size, ROUNDS times): `perf stat -e raw_syscalls:sys_enter -p PID` over the
#      same kind of window, divided by the messages echoed in it, counted
#      as the server's writes (one per message at one in flight), with a
#      breakdown by call (x86_64 syscall numbers).
#   5. Idle memory: each server freshly started, RSS before and after
#      IDLE_CONNS connections that each echoed one byte and then sit idle
#      (benches/idle.py opens them, after 100 warm-up connections so code
#      pages touched once are in the "before"). Judged on anonymous RSS,
#      the memory that grows with connections; total RSS is shown too.
#   6. Fairness: 500 request/response clients (64 bytes) alone, then
#      beside one connection streaming at full speed (two bench processes
#      at once, both on CPU 1): their p50/p99 both ways, ROUNDS times, and
#      the server's CPU. The stream's client runs once at normal priority
#      (the two load generators then compete for CPU 1, and the small
#      clients slow down on their own side too) and once at SCHED_IDLE
#      (`chrt -i 0`: it gets only the CPU the small clients' generator
#      leaves, so what changes for them is the server's doing). The
#      stream's share of the server is its MB/s times the server CPU per
#      MB of the stream alone (run first, each round), over the server's
#      CPU; the small clients' p99 may rise by at most 1 / (1 - share),
#      the factor by which the stream lengthens a turn of the loop if it
#      takes that share of it.
#   7. Short sessions: the sessions load generator (benches/sessions/
#      sessions.c, built with cc -O2) keeps 50 sessions going, each a new
#      connection that sends 64 bytes, shuts down its sending side, reads
#      the echo to EOF and closes (what inetd-style clients and health
#      checks do); sessions per server-CPU-second over the same window as
#      the cells, ROUNDS times, and with perf, the server's system calls
#      per session (counted by its close calls, one per session).
#   Results go to benches/runs/<date>/: results.jsonl (one JSON object per
#   run, with the bench's own JSON inside), summary.md (the tables),
#   machine.txt and command.txt.
#
# Usage
#   benches/run.sh                 full run (~12 minutes on 2 cores)
#   QUICK=1 benches/run.sh         one round of 1 s: a smoke test (~2 min)
#
# Environment
#   ROUNDS=3       alternating rounds per cell (the spread is min-max)
#   DURATION=3     seconds measured per run (after WARMUP)
#   WARMUP=1       seconds of load before measuring
#   IDLE_CONNS=10000  connections for the idle-memory measurement
#   PORT=17200     echod listens on PORT, the reference on PORT+1
#   OUT=dir        where results go (default benches/runs/YYYY-MM-DD,
#                  with -HHMM added when that exists)
#   SKIP_BUILD=1   use the binaries already built
#   REFERENCE=tokio  the reference server: tokio (benches/reference-tokio),
#                  c (benches/reference-c/echo.c, a hand-written
#                  edge-triggered epoll echo, built with cc -O2), or echod:
#                  another echod binary, REFERENCE_ECHOD=path, run with the
#                  same options (a build of another commit: before and
#                  after a change in one run, cell by cell)
#   ECHOD_ARGS=... extra options for echod (e.g. "--buffer 65536"), to
#                  measure a setting against the same reference
#   CELLS_ONLY=... space-separated cells to run (tcp-64-c50 ... stream udp)
#   ECHOD_BIN=path an echod binary to measure instead of target/release's
#                  (a build of another commit); it also runs the load
#   ONLY=...       space-separated parts to run: cells syscalls memory
#                  fairness sessions (default: all)
#
# Needs: cargo, taskset (util-linux), python3, and perf (linux-perf) for
# the syscall count (skipped with a note if perf is missing or refused).
# Not run by CI: the figures depend on the machine.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ -n "${QUICK:-}" ]]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-1}
    IDLE_CONNS=${IDLE_CONNS:-2000}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
IDLE_CONNS=${IDLE_CONNS:-10000}
PORT=${PORT:-17200}
ONLY=${ONLY:-cells syscalls memory fairness sessions}
ECHOD_ARGS=${ECHOD_ARGS:-}
REFERENCE=${REFERENCE:-tokio}

if [[ -z "${OUT:-}" ]]; then
    OUT=benches/runs/$(date +%F)
    [[ -e $OUT ]] && OUT=$OUT-$(date +%H%M)
fi
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

die() {
    echo "run.sh: $*" >&2
    exit 1
}
case $REFERENCE in
    tokio | c) ;;
    echod) [[ -x ${REFERENCE_ECHOD:-} ]] || die "REFERENCE=echod needs REFERENCE_ECHOD=path to an echod binary." ;;
    *) die "REFERENCE must be tokio, c or echod, not '$REFERENCE'." ;;
esac
for tool in cargo taskset chrt python3; do
    command -v "$tool" >/dev/null || die "$tool is needed but not installed."
done
[[ $(nproc) -ge 2 ]] || die "needs at least 2 CPUs (server on CPU 0, load on CPU 1)."

# Both servers and the load generator hold up to IDLE_CONNS descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < IDLE_CONNS + 100)); then
    die "the open-files limit ($(ulimit -n)) is below IDLE_CONNS+100; raise it (ulimit -Hn) or lower IDLE_CONNS."
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --quiet
    if [[ $REFERENCE == tokio ]]; then
        cargo build --release --quiet --manifest-path benches/reference-tokio/Cargo.toml
    elif [[ $REFERENCE == c ]]; then
        command -v cc >/dev/null || die "REFERENCE=c needs a C compiler (cc)."
        mkdir -p benches/reference-c/target
        cc -O2 -o benches/reference-c/target/echo-c benches/reference-c/echo.c
    fi
fi
# The sessions load generator is small: built every time it is used, so
# SKIP_BUILD runs never measure with a stale one.
if [[ " $ONLY " == *" sessions "* ]]; then
    command -v cc >/dev/null || die "the sessions part needs a C compiler (cc)."
    mkdir -p benches/sessions/target
    cc -O2 -Wall -o benches/sessions/target/sessions benches/sessions/sessions.c
fi
SESSIONS=$ROOT/benches/sessions/target/sessions
ECHOD=${ECHOD_BIN:-$ROOT/target/release/echod}
if [[ $REFERENCE == tokio ]]; then
    REF=$ROOT/benches/reference-tokio/target/release/reference-tokio-echo
    REF_NAME="tokio current_thread (benches/reference-tokio)"
elif [[ $REFERENCE == c ]]; then
    REF=$ROOT/benches/reference-c/target/echo-c
    REF_NAME="C edge-triggered epoll (benches/reference-c/echo.c)"
else
    REF=$REFERENCE_ECHOD
    REF_NAME="echod at $REF"
fi
[[ -x $ECHOD && -x $REF ]] || die "binaries missing: build without SKIP_BUILD."

TCK=$(getconf CLK_TCK)
{
    echo "date: $(date -u +%FT%TZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "kernel: $(uname -sr)"
    echo "rustc: $(rustc --version)"
    echo "reference: $REF_NAME"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"
{
    echo "ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP IDLE_CONNS=$IDLE_CONNS ONLY='$ONLY' REFERENCE=$REFERENCE${ECHOD_ARGS:+ ECHOD_ARGS='$ECHOD_ARGS'}${CELLS_ONLY:+ CELLS_ONLY='$CELLS_ONLY'}${REFERENCE_ECHOD:+ REFERENCE_ECHOD=$REFERENCE_ECHOD}${ECHOD_BIN:+ ECHOD_BIN=$ECHOD_BIN}${SKIP_BUILD:+ SKIP_BUILD=1} benches/run.sh"
} >"$OUT/command.txt"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# start_server NAME PORT -> sets SERVER_PID; waits until TCP answers.
start_server() {
    local name=$1 port=$2
    if [[ $name == echod ]]; then
        # shellcheck disable=SC2086
        taskset -c 0 "$ECHOD" -q -b 127.0.0.1 -p "$port" --idle-timeout 0 --udp-rate 0 $ECHOD_ARGS \
            2>>"$OUT/echod.stderr" &
    else
        if [[ $REFERENCE == tokio ]]; then
            taskset -c 0 "$REF" "127.0.0.1:$port" 2>>"$OUT/reference.stderr" &
        elif [[ $REFERENCE == echod ]]; then
            # shellcheck disable=SC2086
            taskset -c 0 "$REF" -q -b 127.0.0.1 -p "$port" --idle-timeout 0 --udp-rate 0 $ECHOD_ARGS \
                2>>"$OUT/reference.stderr" &
        else
            taskset -c 0 "$REF" 127.0.0.1 "$port" 2>>"$OUT/reference.stderr" &
        fi
    fi
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    local tries=0
    until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 1).close()" 2>/dev/null; do
        tries=$((tries + 1))
        ((tries < 50)) || die "$name did not start listening on 127.0.0.1:$port."
        kill -0 "$SERVER_PID" 2>/dev/null || die "$name exited at start; see $OUT/$name.stderr."
        sleep 0.1
    done
}

stop_server() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
now_ns() { date +%s%N; }

# The sampling window sits inside the measured period, away from its edges,
# so that CPU and message rates describe the same steady load.
WIN_START=$(python3 -c "print($WARMUP + 0.25)")
WIN_LEN=$(python3 -c "print(max($DURATION - 0.5, 0.3))")

# run_cell SERVER PID PORT CELL ROUND BENCH_ARGS... : one measured run.
run_cell() {
    local server=$1 pid=$2 port=$3 cell=$4 round=$5
    shift 5
    local tmp
    tmp=$(mktemp)
    taskset -c 1 "$ECHOD" bench "127.0.0.1:$port" --warmup "$WARMUP" -d "$DURATION" --json "$@" >"$tmp" &
    local bench=$!
    sleep "$WIN_START"
    local c0 t0 c1 t1
    c0=$(cpu_ticks "$pid")
    t0=$(now_ns)
    sleep "$WIN_LEN"
    c1=$(cpu_ticks "$pid")
    t1=$(now_ns)
    local status=0
    wait "$bench" || status=$?
    python3 - "$tmp" "$server" "$cell" "$round" "$status" "$((c1 - c0))" "$TCK" "$((t1 - t0))" "$*" >>"$RESULTS" <<'EOF'
import json, sys
path, server, cell, rnd, status, ticks, tck, ns, args = sys.argv[1:]
try:
    bench = json.load(open(path))
except Exception as e:
    bench = {"unparsed": open(path).read()[:500]}
cpu = int(ticks) / int(tck)
wall = int(ns) / 1e9
print(json.dumps({"kind": "cell", "server": server, "cell": cell, "round": int(rnd),
                  "bench_exit": int(status), "bench_args": args,
                  "server_cpu_s": cpu, "window_s": wall, "server_cpu_share": cpu / wall,
                  "bench": bench}))
EOF
    rm -f "$tmp"
    echo "  $server $cell round $round: $(tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); b=r["bench"]; print("%.0f msg/s, server CPU %.0f%%, errors %s" % (b.get("messages_per_s", 0), r["server_cpu_share"] * 100, b.get("errors")))')"
}

declare -A CELL_ARGS=()
CELLS=()
for size in 64 512 4096; do
    for conns in 1 50 500; do
        CELLS+=("tcp-$size-c$conns")
        CELL_ARGS["tcp-$size-c$conns"]="-c $conns -s $size"
    done
done
CELLS+=(stream)
CELL_ARGS[stream]="-c 1 -s 65536 --pipeline 16"
CELLS+=(udp)
CELL_ARGS[udp]="--udp -c 50 -s 64"
if [[ -n "${CELLS_ONLY:-}" ]]; then
    read -r -a CELLS <<<"$CELLS_ONLY"
fi

EPORT=$PORT
RPORT=$((PORT + 1))

if [[ " $ONLY " =~ " "(cells|syscalls|fairness|sessions)" " ]]; then
    start_server echod "$EPORT"
    EPID=$SERVER_PID
    start_server reference "$RPORT"
    RPID=$SERVER_PID
fi

if [[ " $ONLY " == *" cells "* ]]; then
    echo "cells: $ROUNDS round(s) of ${#CELLS[@]} cells x 2 servers, ${WARMUP}s + ${DURATION}s each"
    for ((round = 1; round <= ROUNDS; round++)); do
        for cell in "${CELLS[@]}"; do
            # Alternate which server goes first, so drift in the machine's
            # load does not always favour the same one.
            if ((round % 2)); then order="echod reference"; else order="reference echod"; fi
            for server in $order; do
                # shellcheck disable=SC2086
                if [[ $server == echod ]]; then
                    run_cell echod "$EPID" "$EPORT" "$cell" "$round" ${CELL_ARGS[$cell]}
                else
                    run_cell reference "$RPID" "$RPORT" "$cell" "$round" ${CELL_ARGS[$cell]}
                fi
            done
        done
    done
fi

if [[ " $ONLY " == *" syscalls "* ]]; then
    if ! command -v perf >/dev/null; then
        echo "syscalls: perf not installed (apt-get install linux-perf); skipped" | tee -a "$OUT/notes.txt"
    else
        echo "syscalls: perf stat -e raw_syscalls:sys_enter at 50 connections, $ROUNDS round(s)"
        for ((round = 1; round <= ROUNDS; round++)); do
        for size in 64 512 4096; do
            for server in echod reference; do
                if [[ $server == echod ]]; then pid=$EPID port=$EPORT; else pid=$RPID port=$RPORT; fi
                tmp=$(mktemp)
                taskset -c 1 "$ECHOD" bench "127.0.0.1:$port" --warmup "$WARMUP" -d "$DURATION" --json -c 50 -s "$size" >"$tmp" &
                bench=$!
                sleep "$WIN_START"
                # The total, then (x86_64 numbers) recvfrom, sendto, writev,
                # read, write, epoll_wait/epoll_pwait, to show where they go.
                perf stat -x, -o "$tmp.perf" -p "$pid" -e raw_syscalls:sys_enter \
                    -e raw_syscalls:sys_enter --filter 'id == 45' \
                    -e raw_syscalls:sys_enter --filter 'id == 44' \
                    -e raw_syscalls:sys_enter --filter 'id == 20' \
                    -e raw_syscalls:sys_enter --filter 'id == 0' \
                    -e raw_syscalls:sys_enter --filter 'id == 1' \
                    -e raw_syscalls:sys_enter --filter 'id == 232 || id == 281' \
                    -- sleep "$WIN_LEN" 2>/dev/null || true
                wait "$bench" || true
                python3 - "$tmp" "$tmp.perf" "$server" "$size" "$WIN_LEN" "$round" >>"$RESULTS" <<'EOF'
import json, sys
path, perf_path, server, size, win, rnd = sys.argv[1:]
bench = json.load(open(path))
counts, window = [], None
for line in open(perf_path):
    parts = line.strip().split(",")
    if len(parts) > 3 and "raw_syscalls:sys_enter" in line:
        counts.append(int(parts[0]) if parts[0].isdigit() else None)
        if parts[3].isdigit():
            # perf's own counting time: its start-up makes it shorter than
            # the sleep, so the sleep's length would undercount the rate.
            window = int(parts[3]) / 1e9
names = ["total", "recvfrom", "sendto", "writev", "read", "write", "epoll_wait"]
by_name = dict(zip(names, counts))
# Messages echoed inside perf's window, counted on the server's side: with
# one message in flight per connection each echo is one write (sendto, or
# writev from a ring), so the writes are the messages. The bench's average
# rate times the window is kept as a cross-check; on a busy machine the
# two windows see different rates.
writes = (by_name.get("sendto") or 0) + (by_name.get("writev") or 0) + (by_name.get("write") or 0)
mps = bench.get("messages_per_s") or 0
by_bench = mps * window if window else 0
per_msg = {k: (v / writes if v is not None and writes else None) for k, v in by_name.items()}
print(json.dumps({"kind": "syscalls", "server": server, "cell": f"tcp-{size}-c50", "round": int(rnd),
                  "syscalls": by_name, "window_s": window, "messages_in_window": writes,
                  "messages_in_window_by_bench_rate": by_bench,
                  "syscalls_per_message": per_msg["total"], "per_message": per_msg,
                  "bench": bench}))
EOF
                echo "  $server tcp-$size-c50: $(tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["syscalls_per_message"], "syscalls per message")')"
                rm -f "$tmp" "$tmp.perf"
            done
        done
        done
    fi
fi

if [[ " $ONLY " == *" fairness "* ]]; then
    echo "fairness: 500 x 64-byte request/response, without and with one stream"
    for ((round = 1; round <= ROUNDS; round++)); do
    for server in echod reference; do
        if [[ $server == echod ]]; then pid=$EPID port=$EPORT; else pid=$RPID port=$RPORT; fi
        # The stream alone first: its server CPU per MB prices the stream's
        # share of the server in the runs beside the small clients.
        run_cell "$server" "$pid" "$port" fairness-stream "$round" -c 1 -s 65536 --pipeline 16
        for with in no yes idle; do
            small=$(mktemp)
            stream=$(mktemp)
            if [[ $with != no ]]; then
                # "idle": the stream's client runs at SCHED_IDLE, so it only
                # takes CPU time the small clients' load generator leaves
                # over, and a rise in their p99 comes from the server.
                prio=()
                [[ $with == idle ]] && prio=(chrt -i 0)
                "${prio[@]}" taskset -c 1 "$ECHOD" bench "127.0.0.1:$port" --warmup "$WARMUP" -d "$((DURATION + 2))" \
                    --json -c 1 -s 65536 --pipeline 16 >"$stream" &
                sbench=$!
                sleep 0.5
            fi
            taskset -c 1 "$ECHOD" bench "127.0.0.1:$port" --warmup "$WARMUP" -d "$DURATION" \
                --json -c 500 -s 64 >"$small" &
            sm=$!
            # The server's CPU over the same kind of window as the cells:
            # with the small clients' cost per message from the run without
            # the stream, it tells what share of the server the stream took.
            sleep "$WIN_START"
            c0=$(cpu_ticks "$pid")
            t0=$(now_ns)
            sleep "$WIN_LEN"
            c1=$(cpu_ticks "$pid")
            t1=$(now_ns)
            wait "$sm" || true
            if [[ $with != no ]]; then wait "$sbench" || true; fi
            python3 - "$small" "$stream" "$server" "$with" "$round" "$((c1 - c0))" "$TCK" "$((t1 - t0))" >>"$RESULTS" <<'EOF'
import json, sys
small, stream, server, with_stream, rnd, ticks, tck, ns = sys.argv[1:]
s = json.load(open(small))
try:
    t = json.load(open(stream))
except Exception:
    t = None
share = (int(ticks) / int(tck)) / (int(ns) / 1e9)
print(json.dumps({"kind": "fairness", "server": server, "with_stream": with_stream != "no",
                  "stream_client": {"no": None, "yes": "normal", "idle": "SCHED_IDLE"}[with_stream], "round": int(rnd),
                  "server_cpu_share": share, "small": s, "stream": t}))
EOF
            echo "  $server stream=$with: $(tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["small"]["latency_us"]; print("p50 %s us, p99 %s us" % (l["p50"], l["p99"]))')"
            rm -f "$small" "$stream"
        done
    done
    done
fi

if [[ " $ONLY " == *" sessions "* ]]; then
    have_perf=$(command -v perf || true)
    echo "sessions: 50 at once, 64 bytes each, $ROUNDS round(s)${have_perf:+, with perf}"
    for ((round = 1; round <= ROUNDS; round++)); do
        if ((round % 2)); then order="echod reference"; else order="reference echod"; fi
        for server in $order; do
            if [[ $server == echod ]]; then pid=$EPID port=$EPORT; else pid=$RPID port=$RPORT; fi
            tmp=$(mktemp)
            taskset -c 1 "$SESSIONS" 127.0.0.1 "$port" 50 "$WARMUP" "$DURATION" 64 >"$tmp" &
            load=$!
            sleep "$WIN_START"
            c0=$(cpu_ticks "$pid")
            t0=$(now_ns)
            if [[ -n $have_perf ]]; then
                # The total, then (x86_64 numbers) close and setsockopt: one
                # close per session counts them; a setsockopt per session is
                # what options set once on the listener save.
                perf stat -x, -o "$tmp.perf" -p "$pid" -e raw_syscalls:sys_enter \
                    -e raw_syscalls:sys_enter --filter 'id == 3' \
                    -e raw_syscalls:sys_enter --filter 'id == 54' \
                    -- sleep "$WIN_LEN" 2>/dev/null || true
            else
                sleep "$WIN_LEN"
                : >"$tmp.perf"
            fi
            c1=$(cpu_ticks "$pid")
            t1=$(now_ns)
            status=0
            wait "$load" || status=$?
            python3 - "$tmp" "$tmp.perf" "$server" "$round" "$status" "$((c1 - c0))" "$TCK" "$((t1 - t0))" >>"$RESULTS" <<'EOF'
import json, sys
path, perf_path, server, rnd, status, ticks, tck, ns = sys.argv[1:]
try:
    load = json.load(open(path))
except Exception:
    load = {"unparsed": open(path).read()[:500]}
counts = []
for line in open(perf_path):
    parts = line.strip().split(",")
    if len(parts) > 3 and "raw_syscalls:sys_enter" in line:
        counts.append(int(parts[0]) if parts[0].isdigit() else None)
calls = dict(zip(["total", "close", "setsockopt"], counts))
cpu = int(ticks) / int(tck)
wall = int(ns) / 1e9
per = None
if calls.get("total") and calls.get("close"):
    per = {k: v / calls["close"] for k, v in calls.items() if v is not None}
print(json.dumps({"kind": "sessions", "server": server, "round": int(rnd), "load_exit": int(status),
                  "server_cpu_s": cpu, "window_s": wall, "server_cpu_share": cpu / wall,
                  "syscalls": calls, "syscalls_per_session": per, "load": load}))
EOF
            echo "  $server sessions round $round: $(tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["load"]; print("%.0f sessions/s, server CPU %.0f%%, failed %s" % (l.get("sessions_per_s", 0), r["server_cpu_share"] * 100, l.get("failed")))')"
            rm -f "$tmp" "$tmp.perf"
        done
    done
fi

if [[ -n "${EPID:-}" ]]; then
    stop_server "$EPID"
    stop_server "$RPID"
fi

if [[ " $ONLY " == *" memory "* ]]; then
    echo "memory: RSS over $IDLE_CONNS idle connections"
    for server in echod reference; do
        port=$((PORT + 2))
        start_server "$server" "$port"
        pid=$SERVER_PID
        taskset -c 1 python3 benches/idle.py "$pid" 127.0.0.1 "$port" "$IDLE_CONNS" "$server" >>"$RESULTS"
        echo "  $server: $(tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f bytes per idle connection" % r["bytes_per_connection"])')"
        stop_server "$pid"
    done
fi

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
python3 benches/summary.py "$OUT" >"$OUT/summary.md"
cat "$OUT/summary.md"
echo
echo "results in $OUT"
