#!/usr/bin/env python3
"""Checks tests/link.py against a local TCP server (no PostgreSQL needed): bytes arrive unchanged
in both directions (sha256), the delay is what was asked for and does not cap throughput, a reset comes
after exactly --reset-every-bytes with ECONNRESET at the client while new connections still
work, --reset-count-across and --max-resets, --stall-after-bytes, half-close, --port-file and exit on stdin EOF.

Usage: python3 tests/link_check.py   (about 5 s; exits 1 with the failed check on stderr)
"""

import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

LINK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "link.py")
PATTERN = hashlib.sha256(b"link").digest() * 32768  # 1 MiB


def serve(conn):
    """'SEND n\\n': sends n bytes of PATTERN repeated and closes; 'ECHO': echoes until EOF, then sends the
    sha256 of what it got and closes; 'PING': echoes each recv at once."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        command = conn.recv(64)
        if command.startswith(b"SEND "):
            left = int(command.split()[1])
            while left:
                piece = PATTERN[:min(left, len(PATTERN))]
                conn.sendall(piece)
                left -= len(piece)
        elif command.startswith(b"ECHO"):
            digest = hashlib.sha256(command[4:])
            while data := conn.recv(1 << 20):
                digest.update(data)
            conn.sendall(digest.hexdigest().encode())
        elif command.startswith(b"PING"):
            conn.sendall(command)
            while data := conn.recv(64):
                conn.sendall(data)
        conn.close()
    except OSError:
        pass  # the reset checks cut connections in the middle of a SEND


def start_server():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def start_link(target, *extra):
    proc = subprocess.Popen([sys.executable, LINK, "--target", f"127.0.0.1:{target}", "--max-seconds", "60", *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def stop_link(proc):
    proc.stdin.close()
    proc.wait(timeout=5)
    return proc.stderr.read()


def receive(port, n, timeout=None):
    """Asks for n bytes; returns (bytes received, the error that ended the stream or None, seconds)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout)
    started = time.perf_counter()
    sock.sendall(b"SEND %d\n" % n)
    got = hashlib.sha256()
    count = 0
    error = None
    try:
        while data := sock.recv(1 << 20):
            got.update(data)
            count += len(data)
    except OSError as e:
        error = e
    sock.close()
    if got.hexdigest() != expected_digest(count):
        raise AssertionError(f"the {count} bytes received differ from what the server sent")
    return count, error, time.perf_counter() - started


def expected_digest(n):
    digest = hashlib.sha256()
    while n:
        piece = PATTERN[:min(n, len(PATTERN))]
        digest.update(piece)
        n -= len(piece)
    return digest.hexdigest()



def ping(port, rounds=20):
    """Returns (ms from connect() to the first answer, median ms of a round trip afterwards)."""
    started = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"PING")
    sock.recv(64)
    first = (time.perf_counter() - started) * 1000
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        sock.sendall(b"p")
        if sock.recv(64) != b"p":
            raise AssertionError("ping answer differs")
        times.append(time.perf_counter() - started)
    sock.close()
    return first, statistics.median(times) * 1000


def check(condition, message):
    if not condition:
        sys.exit(f"link_check: FAILED: {message}")
    print(f"link_check: ok: {message}")


def main():
    target = start_server()

    for delay in ("0", "10"):
        proc, port = start_link(target, "--delay-ms", delay)
        # Client -> server: 64 MiB echoed into a digest after the client's half-close.
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"ECHO")
        sent = hashlib.sha256()
        for _ in range(64):
            sock.sendall(PATTERN)
            sent.update(PATTERN)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(256):
            answer += data
        sock.close()
        check(answer.decode() == sent.hexdigest(), f"delay {delay} ms: 64 MiB client->server unchanged, half-close passed on")
        count, error, seconds = receive(port, 200 * 2**20)
        check(count == 200 * 2**20 and error is None, f"delay {delay} ms: 200 MiB server->client in {seconds:.2f}s ({count / seconds / 1e6:.0f} MB/s)")
        first, rtt = ping(port)
        low = 2 * float(delay)
        check(low <= rtt < low + 10, f"delay {delay} ms: round trip {rtt:.2f} ms")
        check(2 * low <= first < 2 * low + 20, f"delay {delay} ms: connect and first answer {first:.2f} ms (TCP handshake + round trip)")
        stop_link(proc)
    direct = receive(target, 200 * 2**20)[2]
    print(f"link_check: direct, for comparison: 200 MiB in {direct:.2f}s ({200 * 2**20 / direct / 1e6:.0f} MB/s)")

    for delay in ("0", "10"):
        proc, port = start_link(target, "--delay-ms", delay, "--reset-every-bytes", "5000000")
        for attempt in (1, 2):
            count, error, _ = receive(port, 12_000_000)
            check(count == 5_000_000 and isinstance(error, ConnectionResetError),
                  f"delay {delay} ms, connection {attempt}: reset after exactly 5,000,000 bytes ({count}, {error!r})")
        count, error, _ = receive(port, 4_000_000)
        check(count == 4_000_000 and error is None, f"delay {delay} ms: a connection under the limit ends normally")
        log = stop_link(proc)
        check(log.count("link: reset connection") == 2, f"delay {delay} ms: two resets logged")

    for delay in ("0", "10"):
        proc, port = start_link(target, "--delay-ms", delay, "--stall-after-bytes", "3000000", "--max-stalls", "1")
        count, error, seconds = receive(port, 8_000_000, timeout=1.0)
        check(count == 3_000_000 and isinstance(error, TimeoutError),
              f"delay {delay} ms: a stalled connection delivers exactly 3,000,000 bytes, then nothing ({count}, {error!r})")
        count, error, _ = receive(port, 8_000_000, timeout=5.0)
        check(count == 8_000_000 and error is None, f"delay {delay} ms: --max-stalls 1: the next connection is not stalled")
        log = stop_link(proc)
        check(log.count("link: stalled connection") == 1, f"delay {delay} ms: one stall logged")

    proc, port = start_link(target, "--reset-every-bytes", "5000000", "--reset-count-across", "--max-resets", "1")
    first = receive(port, 3_000_000)
    second = receive(port, 3_000_000)
    third = receive(port, 8_000_000)
    check(first[:2] == (3_000_000, None) and second[0] == 2_000_000 and isinstance(second[1], ConnectionResetError),
          "--reset-count-across: the count runs over connections")
    check(third[:2] == (8_000_000, None), "--max-resets 1: no reset after the first")
    stop_link(proc)

    with tempfile.TemporaryDirectory(prefix="link-check.") as tmp:
        port_file = os.path.join(tmp, "port")
        proc, port = start_link(target, "--port-file", port_file)
        with open(port_file) as f:
            check(int(f.read()) == port, "--port-file holds the port printed on stdout")
        started = time.perf_counter()
        proc.stdin.close()
        proc.wait(timeout=5)
        check(proc.returncode == 0, f"exits on stdin EOF (in {time.perf_counter() - started:.2f}s)")
    proc = subprocess.Popen([sys.executable, LINK, "--target", f"127.0.0.1:{target}", "--max-seconds", "0.5", "--ignore-stdin"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    check(proc.wait(timeout=5) == 3, "--max-seconds: exit status 3")


if __name__ == "__main__":
    main()
