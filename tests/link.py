#!/usr/bin/env python3
"""A user-space TCP proxy standing for the network between a tap and Heroku (tests, benchmarks).

This machine's kernel has no netem, so latency and connection resets are injected here:

    python3 tests/link.py --target 127.0.0.1:5432 [--delay-ms N] [--reset-every-bytes N] ...

It listens on 127.0.0.1 (port 0 by default: the kernel picks one) and forwards every accepted
connection to --target. The chosen port is the first line on stdout (flushed at once) and, with
--port-file PATH, is also written to PATH (written to PATH.tmp, then renamed, so a reader never
sees half a number).

Latency. --delay-ms N delays each direction by N ms, so --delay-ms 20 is a 40 ms round trip. It does
not limit bandwidth: per direction one thread reads chunks (up to 256 KiB) as fast as the sender
writes and queues (due time = read time + N ms, bytes); another thread writes each chunk at its due
time, in order, so any number of chunks are in flight at once. The queue holds at most
--window-bytes (default 64 MiB) per direction, like a TCP window: when it is full the reader waits,
which caps a direction at window / delay (64 MiB / 20 ms = 3.2 GB/s), far above what a PostgreSQL
backend sends on this machine. With --delay-ms 0 (the default) one thread per direction copies
straight through without a queue. TCP's handshake costs a round trip too: a new connection is opened
to the target, and the client's first bytes read, 2 x delay after accept. Not modelled: bandwidth
limits, loss, reordering, jitter; TCP's own slow start and window growth happen on loopback (no
delay) on both sides of the proxy, not across the delayed hop.

Resets. --reset-every-bytes N cuts a connection once N bytes have gone server -> client on it:
exactly N bytes are delivered (and acknowledged by the client's kernel), then both of its sockets
are reset (RST: SO_LINGER 0 and a disconnect), so the client sees "connection reset by peer" in the
middle of a stream and the server sees its client vanish. Bytes are wire bytes (with SSL: TLS
records, including the startup and handshake). New connections work as before; each connection
counts its own bytes, or with --reset-count-across the count runs over all connections (it restarts
after each reset). --max-resets K stops resetting after K resets. Every reset is logged on stderr as
"link: reset connection C after B bytes server->client (reset R)".

Stalls. --stall-after-bytes N lets a connection go silent once N bytes have gone server -> client
on it: exactly N bytes are delivered, and from then on nothing more in either direction, while
both TCP connections stay open, as when a network path dies without either end noticing (the
client sees no data and no error; only its own timeouts or keepalives end the wait). New
connections work as before; --max-stalls K stops after K stalls. Logged as "link: stalled
connection C after B bytes server->client (stall S)". When one end closes a stalled connection,
the proxy closes both; the server's close is not passed on.

A reset (or error) on one side is passed on to the other side after the data before it, and an
orderly close (FIN) is passed on as a half-close, so the proxy is transparent for both.

Bounded and self-stopping: it exits (status 0) when its stdin reaches end of file: start it with
stdin a pipe that the parent keeps open (Python: stdin=subprocess.PIPE; Rust:
Stdio::piped() and keep the ChildStdin), so it ends when the parent closes the pipe or dies,
however it dies (even SIGKILL). It also exits when its parent process changes (the parent died
and it was re-parented), checked every 0.2 s, and after --max-seconds (default 600; exit
status 3 with a message). --ignore-stdin turns the stdin watch off for interactive use (then run
it in the foreground, or rely on --max-seconds). SIGTERM/SIGINT end it at once.

Only loopback: the listening address is 127.0.0.1, and --target must be a loopback address
(127.0.0.0/8, ::1 or localhost).

With -v each connection's open and close (byte counts) is logged on stderr.
"""

import argparse
import collections
import ctypes
import ctypes.util
import fcntl
import ipaddress
import os
import signal
import socket
import struct
import sys
import termios
import threading
import time

CHUNK_BYTES = 256 * 1024
DEFAULT_WINDOW_BYTES = 64 * 1024 * 1024

# Markers queued after the data of a direction: the source closed in order, or failed.
EOF = "eof"
RESET = "reset"


def log(message):
    """One line on stderr; stdout carries only the port."""
    sys.stderr.write(f"link: {message}\n")
    sys.stderr.flush()


_libc = None

# How long a reset waits for the client to acknowledge the bytes before it (a client that stops
# reading gets its reset after this long, with fewer bytes).
RESET_DRAIN_SECONDS = 10.0


def wait_acknowledged(sock, limit):
    """Waits until the peer has acknowledged all bytes written to sock (SIOCOUTQ = 0), at most
    `limit` seconds."""
    deadline = time.monotonic() + limit
    buf = bytearray(struct.calcsize("i"))
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
        except OSError:
            return
        if struct.unpack("i", buf)[0] == 0:
            return
        time.sleep(0.001)


def _disconnect(sock):
    """connect(AF_UNSPEC) on a TCP socket: Linux's tcp_disconnect, which sends RST to the peer and
    wakes every thread blocked on the socket (close() alone does neither while another thread is
    inside recv or send on it). Returns False where unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        unspec = struct.pack("=H14x", socket.AF_UNSPEC)
        buf = ctypes.create_string_buffer(unspec, len(unspec))
        return _libc.connect(sock.fileno(), buf, len(unspec)) == 0
    except (OSError, AttributeError, ValueError):
        return False


class Counter:
    """Bytes server -> client since the last reset, shared by all connections when
    --reset-count-across is given (each connection has its own otherwise)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.value = 0


class Link:
    """Settings and counters shared by all connections."""

    def __init__(self, args):
        self.target = args.target
        self.delay = args.delay_ms / 1000.0
        self.window = args.window_bytes
        self.reset_every = args.reset_every_bytes
        self.max_resets = args.max_resets
        self.stall_after = args.stall_after_bytes
        self.max_stalls = args.max_stalls
        self.stalls = 0
        self.shared_counter = Counter() if args.reset_count_across else None
        self.verbose = args.verbose
        self.lock = threading.Lock()
        self.resets = 0
        self.connections = 0

    def take_reset(self):
        """Whether one more reset may happen (and counts it)."""
        with self.lock:
            if self.max_resets is not None and self.resets >= self.max_resets:
                return None
            self.resets += 1
            return self.resets


    def take_stall(self):
        """Whether one more stall may happen (and counts it)."""
        with self.lock:
            if self.max_stalls is not None and self.stalls >= self.max_stalls:
                return None
            self.stalls += 1
            return self.stalls


class Connection:
    """One proxied connection: client socket, server socket and two directions."""

    def __init__(self, link, number, client, server):
        self.link = link
        self.number = number
        self.client = client
        self.server = server
        self.lock = threading.Lock()
        self.aborted = False
        self.closed_directions = 0
        self.counter = link.shared_counter or Counter()
        self.bytes_up = 0
        self.bytes_down = 0
        self.stalled = False
        self.pipes = []

    def start(self):
        for src, dst, down in ((self.client, self.server, False), (self.server, self.client, True)):
            if self.link.delay > 0:
                pipe = Pipe(self.link.window)
                self.pipes.append(pipe)
                threading.Thread(target=self.read_loop, args=(src, pipe, down), daemon=True).start()
                threading.Thread(target=self.write_loop, args=(pipe, dst, down), daemon=True).start()
            else:
                threading.Thread(target=self.copy_loop, args=(src, dst, down), daemon=True).start()

    def abort(self):
        """Resets both sockets (RST to both peers) and wakes every thread blocked on them."""
        with self.lock:
            if self.aborted:
                return
            self.aborted = True
        for pipe in self.pipes:
            pipe.close()
        for sock in (self.client, self.server):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            if not _disconnect(sock):
                # Fallback: SHUT_RD wakes blocked readers without sending anything; the close
                # with SO_LINGER 0 then sends the RST once no thread holds the socket.
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
        for sock in (self.client, self.server):
            try:
                sock.close()
            except OSError:
                pass
        self.report("aborted")

    def source_ended(self, dst, down, clean):
        """The source of a direction closed (clean) or failed: passes the half-close or the reset
        on. On a stalled connection nothing reaches the client any more: the server's end is
        closed quietly, and the client's close (a client giving up on a silent server) closes
        both, so the proxy does not hold the connection."""
        if self.stalled:
            if down:
                try:
                    self.server.close()
                except OSError:
                    pass
            else:
                self.abort()
            return
        if not clean:
            self.abort()
            return
        dst.shutdown(socket.SHUT_WR)
        self.direction_done()

    def direction_done(self):
        """Called when one direction ended in order; closes both sockets when both have."""
        with self.lock:
            self.closed_directions += 1
            done = self.closed_directions == 2 and not self.aborted
            if done:
                self.aborted = True
        if done:
            for sock in (self.client, self.server):
                try:
                    sock.close()
                except OSError:
                    pass
            self.report("closed")

    def report(self, how):
        if self.link.verbose:
            log(f"connection {self.number} {how}: {self.bytes_up} bytes client->server, {self.bytes_down} bytes server->client")

    def send(self, dst, data, down):
        """Writes data to dst; on the server -> client side counts bytes and cuts the connection
        after exactly --reset-every-bytes, or goes silent after --stall-after-bytes. Returns False
        when the connection was cut."""
        if self.stalled:
            return True  # lost, as on a link that went down without either end noticing
        if down and self.link.stall_after and self.bytes_down + len(data) >= self.link.stall_after:
            number = self.link.take_stall()
            if number is not None:
                room = self.link.stall_after - self.bytes_down
                if room > 0:
                    dst.sendall(data[:room])
                    self.bytes_down += room
                self.stalled = True
                log(f"stalled connection {self.number} after {self.bytes_down} bytes server->client (stall {number})")
                return True
        if down and self.link.reset_every:
            with self.counter.lock:
                room = self.link.reset_every - self.counter.value
                cut = len(data) >= room
                if cut:
                    number = self.link.take_reset()
                    if number is None:
                        cut = False
                    else:
                        self.counter.value = 0
                if not cut:
                    self.counter.value += len(data)
            if cut:
                if room > 0:
                    dst.sendall(data[:room])
                    # A reset throws away what the kernel has not sent yet: wait until the
                    # client has acknowledged everything, so that it got exactly N bytes.
                    wait_acknowledged(dst, RESET_DRAIN_SECONDS)
                self.bytes_down += max(room, 0)
                log(f"reset connection {self.number} after {self.bytes_down} bytes server->client (reset {number})")
                self.abort()
                return False
        dst.sendall(data)
        if down:
            self.bytes_down += len(data)
        else:
            self.bytes_up += len(data)
        return True

    def copy_loop(self, src, dst, down):
        """No delay: read and write in the same thread."""
        try:
            while True:
                data = src.recv(CHUNK_BYTES)
                if not data:
                    self.source_ended(dst, down, clean=True)
                    return
                if not self.send(dst, data, down):
                    return
        except OSError:
            if not self.aborted:
                self.source_ended(dst, down, clean=False)

    def read_loop(self, src, pipe, down):
        """Delay: queue (due time, bytes); never waits for the writer unless the window is full."""
        try:
            while True:
                data = src.recv(CHUNK_BYTES)
                if not data:
                    pipe.put(time.monotonic() + self.link.delay, EOF)
                    return
                if not pipe.put(time.monotonic() + self.link.delay, data):
                    return
        except OSError:
            if not self.aborted:
                pipe.put(time.monotonic() + self.link.delay, RESET)

    def write_loop(self, pipe, dst, down):
        """Delay: writes each chunk at its due time, in order."""
        try:
            while True:
                item = pipe.get()
                if item is None:
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if data is EOF or data is RESET:
                    self.source_ended(dst, down, clean=data is EOF)
                    return
                if not self.send(dst, data, down):
                    pipe.close()
                    return
        except OSError:
            pipe.close()
            self.abort()


class Pipe:
    """A queue of (due time, bytes) holding at most `window` bytes."""

    def __init__(self, window):
        self.window = window
        self.items = collections.deque()
        self.queued = 0
        self.closed = False
        self.cond = threading.Condition()

    def put(self, due, data):
        size = len(data) if isinstance(data, bytes) else 0
        with self.cond:
            while self.queued + size > self.window and self.queued > 0 and not self.closed:
                self.cond.wait()
            if self.closed:
                return False
            self.items.append((due, data))
            self.queued += size
            self.cond.notify_all()
            return True

    def get(self):
        with self.cond:
            while not self.items and not self.closed:
                self.cond.wait()
            if self.closed:
                return None
            due, data = self.items.popleft()
            if isinstance(data, bytes):
                self.queued -= len(data)
            self.cond.notify_all()
            return due, data

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def parse_target(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise argparse.ArgumentTypeError(f"{host} is not a loopback address; this link only forwards on loopback")
        except ValueError:
            raise argparse.ArgumentTypeError(f"{host!r} is not an IP address or localhost")
    return host, int(port)


def watch_stdin():
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    log("stdin reached end of file, exiting (start with stdin a pipe, or pass --ignore-stdin)")
    os._exit(0)


def watch_parent(parent):
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, type=parse_target, help="HOST:PORT to forward to (loopback only)")
    parser.add_argument("--listen-port", type=int, default=0, help="port on 127.0.0.1 (0: the kernel picks one)")
    parser.add_argument("--port-file", help="also write the listening port to this file")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay per direction (round trip = 2x)")
    parser.add_argument("--window-bytes", type=int, default=DEFAULT_WINDOW_BYTES, help="bytes queued per direction at most")
    parser.add_argument("--reset-every-bytes", type=int, default=0, help="reset a connection after this many bytes server->client")
    parser.add_argument("--reset-count-across", action="store_true", help="count --reset-every-bytes over all connections")
    parser.add_argument("--max-resets", type=int, default=None, help="reset at most this many times")
    parser.add_argument("--stall-after-bytes", type=int, default=0,
                        help="let a connection go silent after this many bytes server->client")
    parser.add_argument("--max-stalls", type=int, default=None, help="stall at most this many connections")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="exit after this long (status 3)")
    parser.add_argument("--ignore-stdin", action="store_true", help="do not exit when stdin reaches end of file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each connection's open and close")
    args = parser.parse_args()
    if args.delay_ms < 0 or args.reset_every_bytes < 0 or args.stall_after_bytes < 0 or args.window_bytes < CHUNK_BYTES:
        parser.error("--delay-ms, --reset-every-bytes and --stall-after-bytes must not be negative; --window-bytes at least 262144")

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    if not args.ignore_stdin:
        threading.Thread(target=watch_stdin, daemon=True).start()
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()

    def expire():
        log(f"--max-seconds {args.max_seconds:g} reached, exiting")
        os._exit(3)

    timer = threading.Timer(args.max_seconds, expire)
    timer.daemon = True
    timer.start()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.listen_port))
    listener.listen(256)
    port = listener.getsockname()[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    log(f"listening on 127.0.0.1:{port} -> {args.target[0]}:{args.target[1]}, delay {args.delay_ms:g} ms each way"
        + (f", reset every {args.reset_every_bytes} bytes server->client" if args.reset_every_bytes else "")
        + (f", stall after {args.stall_after_bytes} bytes server->client" if args.stall_after_bytes else ""))

    link = Link(args)
    while True:
        client, _ = listener.accept()
        link.connections += 1
        threading.Thread(target=open_connection, args=(link, link.connections, client), daemon=True).start()


def open_connection(link, number, client):
    """Connects to the target for one accepted client, after the round trip of TCP's handshake:
    the client's first bytes wait, unread in its socket, for 2 x delay and then travel with the
    delay, so they arrive 3 x delay after connect() as across a real link (the client's connect()
    itself returns at once: the proxy accepted on loopback)."""
    if link.delay > 0:
        time.sleep(2 * link.delay)
    try:
        server = socket.create_connection(link.target)
    except OSError as e:
        log(f"cannot connect to {link.target[0]}:{link.target[1]}: {e}")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        return
    for sock in (client, server):
        # A proxy must not add Nagle delays to the small messages of the protocol.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if link.verbose:
        log(f"connection {number} opened")
    Connection(link, number, client, server).start()

if __name__ == "__main__":
    main()
