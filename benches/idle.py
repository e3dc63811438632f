#!/usr/bin/env python3
"""Idle memory of an echo server: RSS before and after N idle connections.

Usage: idle.py PID HOST PORT N NAME

After 100 warm-up connections (opened, echoed, closed), opens N TCP
connections to HOST:PORT; on each it sends one byte and waits
for its echo, so the server has accepted and served it, then leaves it
idle. Reads the server's VmRSS and RssAnon (/proc/PID/status) before the
first connection and one second after the last, and prints one JSON
object: the deltas and the bytes per connection. Every socket has a
timeout, so a server that stops answering ends the run with an error
instead of hanging it. Raise the open-files limit first (run.sh does).
"""
import json
import socket
import sys
import time


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def main():
    pid, host, port, n, name = sys.argv[1:]
    port, n = int(port), int(n)
    # Warm-up: the accept and echo paths touch their code pages once;
    # those are the binary's, not the connections'.
    for _ in range(100):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"x")
            s.recv(1)
    time.sleep(0.5)
    before = status(pid)
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"x")
            if s.recv(1) != b"x":
                sys.exit(f"idle.py: connection {i} got no echo; the server closed it.")
            socks.append(s)
        time.sleep(1.0)
        after = status(pid)
    except OSError as e:
        sys.exit(f"idle.py: connection {len(socks)} of {n} failed: {e}")
    finally:
        for s in socks:
            s.close()
    delta = {k: after[k] - before[k] for k in before}
    print(json.dumps({
        "kind": "memory", "server": name, "connections": n,
        "before": before, "after": after, "delta": delta,
        "bytes_per_connection": delta["VmRSS"] / n,
        "anon_bytes_per_connection": delta["RssAnon"] / n,
    }))


if __name__ == "__main__":
    main()
