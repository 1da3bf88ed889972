#!/usr/bin/env python3
"""Fault injection against Portask's AMQP 0-9-1 listener, from outside.

Modes (run one or several, in order):

  frames     hand-picked malformed frames / frames in the wrong place
  truncate   every AMQP 0-9-1 method's valid encoding cut at every length
  mutate     random field values / byte mutations of every method (--seed, --iterations)
  nest       deeply nested field tables / arrays (method arguments and message headers)
  disconnect the socket closed at every point of a publish
  durable    kill -9 during a confirm stream / during consume+ack, restart, count messages
  conns      connections opened and dropped without closing
  slowreader a consumer that stops reading its socket with a deep queue (RSS watch)
  pipeline   a client that pipelines basic.get+reject of a 1 MiB message and never reads (RSS watch)

After every case the broker must still be alive, its log must have no "panicked" line and
a fresh client must still declare / publish / get. The broker's answer is classified:
  close:<code>          connection.close with that reply code (then close-ok, socket closes)
  chclose:<code>        channel.close with that code
  eof                   socket closed without connection.close
  HANG                  nothing within --timeout seconds and the socket is still open
  OPEN-AFTER-CLOSE      connection.close answered with close-ok, socket stayed open

Standard library only, except `durable` / `slowreader` which need pika.

  python3 scripts/amqp-fault.py --pid $(pgrep -n portask) --log /tmp/fz/broker.log frames truncate
  python3 scripts/amqp-fault.py --broker-bin target/release/portask --data-dir /tmp/fz/data durable

With --broker-bin the script starts the broker itself (and restarts it after a crash).
"""

import argparse
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time

HOST = "127.0.0.1"
PORT = 35672
TIMEOUT = 5.0
FRAME_END = 0xCE
PROTO = b"AMQP\x00\x00\x09\x01"

# ---------------------------------------------------------------- encoding


def shortstr(s):
    if isinstance(s, str):
        s = s.encode()
    return bytes([len(s)]) + s


def longstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">I", len(s)) + s


def value(v):
    if isinstance(v, bool):
        return b"t" + bytes([int(v)])
    if isinstance(v, int):
        return b"l" + struct.pack(">q", v)
    if isinstance(v, (str, bytes)):
        return b"S" + longstr(v)
    if isinstance(v, dict):
        return b"F" + table(v)
    if isinstance(v, list):
        inner = b"".join(value(x) for x in v)
        return b"A" + struct.pack(">I", len(inner)) + inner
    if v is None:
        return b"V"
    raise TypeError(v)


def table(d):
    inner = b"".join(shortstr(k) + value(v) for k, v in d.items())
    return struct.pack(">I", len(inner)) + inner


def frame(kind, channel, payload, end=FRAME_END, size=None):
    if size is None:
        size = len(payload)
    return struct.pack(">BHI", kind, channel, size) + payload + bytes([end])


def method(channel, cls, mid, args=b""):
    return frame(1, channel, struct.pack(">HH", cls, mid) + args)


def header(channel, body_size, props=b"\x00\x00", cls=60, weight=0):
    return frame(2, channel, struct.pack(">HHQ", cls, weight, body_size) + props)


def body(channel, data):
    return frame(3, channel, data)


def publish(channel, rk, data, exchange="", props=b"\x00\x00", frame_max=131072):
    step = frame_max - 8
    bodies = b"".join(body(channel, data[i:i + step]) for i in range(0, len(data), step))
    return (method(channel, 60, 40, b"\x00\x00" + shortstr(exchange) + shortstr(rk) + b"\x00")
            + header(channel, len(data), props) + bodies)


# Field types: s=short(16) l=long(32) L=longlong o=octet S=shortstr T=longstr t=table bN=N bits
METHODS = {
    (10, 10): ("connection.start", ["o", "o", "t", "T", "T"]),
    (10, 11): ("connection.start-ok", ["t", "S", "T", "S"]),
    (10, 20): ("connection.secure", ["T"]),
    (10, 21): ("connection.secure-ok", ["T"]),
    (10, 30): ("connection.tune", ["s", "l", "s"]),
    (10, 31): ("connection.tune-ok", ["s", "l", "s"]),
    (10, 40): ("connection.open", ["S", "S", "b1"]),
    (10, 41): ("connection.open-ok", ["S"]),
    (10, 50): ("connection.close", ["s", "S", "s", "s"]),
    (10, 51): ("connection.close-ok", []),
    (10, 60): ("connection.blocked", ["S"]),
    (10, 61): ("connection.unblocked", []),
    (10, 70): ("connection.update-secret", ["T", "S"]),
    (10, 71): ("connection.update-secret-ok", []),
    (20, 10): ("channel.open", ["S"]),
    (20, 11): ("channel.open-ok", ["T"]),
    (20, 20): ("channel.flow", ["b1"]),
    (20, 21): ("channel.flow-ok", ["b1"]),
    (20, 40): ("channel.close", ["s", "S", "s", "s"]),
    (20, 41): ("channel.close-ok", []),
    (30, 10): ("access.request", ["S", "b5"]),
    (30, 11): ("access.request-ok", ["s"]),
    (40, 10): ("exchange.declare", ["s", "S", "S", "b5", "t"]),
    (40, 11): ("exchange.declare-ok", []),
    (40, 20): ("exchange.delete", ["s", "S", "b2"]),
    (40, 21): ("exchange.delete-ok", []),
    (40, 30): ("exchange.bind", ["s", "S", "S", "S", "b1", "t"]),
    (40, 31): ("exchange.bind-ok", []),
    (40, 40): ("exchange.unbind", ["s", "S", "S", "S", "b1", "t"]),
    (40, 51): ("exchange.unbind-ok", []),
    (50, 10): ("queue.declare", ["s", "S", "b5", "t"]),
    (50, 11): ("queue.declare-ok", ["S", "l", "l"]),
    (50, 20): ("queue.bind", ["s", "S", "S", "S", "b1", "t"]),
    (50, 21): ("queue.bind-ok", []),
    (50, 30): ("queue.purge", ["s", "S", "b1"]),
    (50, 31): ("queue.purge-ok", ["l"]),
    (50, 40): ("queue.delete", ["s", "S", "b3"]),
    (50, 41): ("queue.delete-ok", ["l"]),
    (50, 50): ("queue.unbind", ["s", "S", "S", "S", "t"]),
    (50, 51): ("queue.unbind-ok", []),
    (60, 10): ("basic.qos", ["l", "s", "b1"]),
    (60, 11): ("basic.qos-ok", []),
    (60, 20): ("basic.consume", ["s", "S", "S", "b4", "t"]),
    (60, 21): ("basic.consume-ok", ["S"]),
    (60, 30): ("basic.cancel", ["S", "b1"]),
    (60, 31): ("basic.cancel-ok", ["S"]),
    (60, 40): ("basic.publish", ["s", "S", "S", "b2"]),
    (60, 50): ("basic.return", ["s", "S", "S", "S"]),
    (60, 60): ("basic.deliver", ["S", "L", "b1", "S", "S"]),
    (60, 70): ("basic.get", ["s", "S", "b1"]),
    (60, 71): ("basic.get-ok", ["L", "b1", "S", "S", "l"]),
    (60, 72): ("basic.get-empty", ["S"]),
    (60, 80): ("basic.ack", ["L", "b1"]),
    (60, 90): ("basic.reject", ["L", "b1"]),
    (60, 100): ("basic.recover-async", ["b1"]),
    (60, 110): ("basic.recover", ["b1"]),
    (60, 111): ("basic.recover-ok", []),
    (60, 120): ("basic.nack", ["L", "b2"]),
    (85, 10): ("confirm.select", ["b1"]),
    (85, 11): ("confirm.select-ok", []),
    (90, 10): ("tx.select", []),
    (90, 11): ("tx.select-ok", []),
    (90, 20): ("tx.commit", []),
    (90, 21): ("tx.commit-ok", []),
    (90, 30): ("tx.rollback", []),
    (90, 31): ("tx.rollback-ok", []),
}

# Plausible argument values (so the full-length encoding is a meaningful method).
SAMPLE = {
    "S": lambda i, name: {"connection.open": "/", "connection.start-ok": "PLAIN"}.get(name, "fz-q" if i else "fz"),
    "T": lambda i, name: "\x00guest\x00guest",
    "s": lambda i, name: 0,
    "l": lambda i, name: 0,
    "L": lambda i, name: 1,
    "o": lambda i, name: 0,
    "t": lambda i, name: {},
}


def encode_field(t, v):
    if t == "s":
        return struct.pack(">H", v & 0xFFFF)
    if t == "l":
        return struct.pack(">I", v & 0xFFFFFFFF)
    if t == "L":
        return struct.pack(">Q", v & 0xFFFFFFFFFFFFFFFF)
    if t == "o":
        return bytes([v & 0xFF])
    if t == "S":
        return shortstr(v)
    if t == "T":
        return longstr(v)
    if t == "t":
        return table(v) if isinstance(v, dict) else v
    if t.startswith("b"):
        return bytes([v & 0xFF])
    raise ValueError(t)


def encode_args(cls, mid, values=None):
    name, fields = METHODS[(cls, mid)]
    out = b""
    for i, t in enumerate(fields):
        if values is not None:
            v = values[i]
        elif t.startswith("b"):
            v = 0
        else:
            v = SAMPLE[t](i, name)
        out += encode_field(t, v)
    return out


# ---------------------------------------------------------------- raw client


class Raw:
    """A raw AMQP client; `frames()` reads what the broker sends."""

    def __init__(self, timeout=TIMEOUT):
        self.sock = socket.create_connection((HOST, PORT), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.time()
        if left <= 0:
            return False
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        if not p.poll(left * 1000):
            return False
        try:
            d = self.sock.recv(1 << 16)
        except (ConnectionResetError, OSError):
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def next_frame(self, timeout=None):
        deadline = time.time() + (timeout if timeout is not None else self.timeout)
        while True:
            if len(self.buf) >= 7:
                kind, ch, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) >= 8 + size:
                    payload = self.buf[7:7 + size]
                    end = self.buf[7 + size]
                    self.buf = self.buf[8 + size:]
                    return (kind, ch, payload, end)
            if self.eof or not self._fill(deadline):
                return None

    def expect_method(self, cls, mid, timeout=None):
        while True:
            f = self.next_frame(timeout)
            if f is None:
                raise IOError("expected %d.%d, got nothing (eof=%s)" % (cls, mid, self.eof))
            kind, ch, p, _ = f
            if kind == 1 and struct.unpack(">HH", p[:4]) == (cls, mid):
                return ch, p[4:]
            if kind == 8:
                continue
            raise IOError("expected %d.%d, got frame %r" % (cls, mid, f[:3]))

    def handshake(self, frame_max=131072, heartbeat=0, channel_max=0, upto="open"):
        self.send(PROTO)
        self.expect_method(10, 10)
        if upto == "start":
            return
        props = table({"product": "amqp-fault", "capabilities": {"connection.blocked": True}})
        self.send(method(0, 10, 11, props + shortstr("PLAIN") + longstr("\x00guest\x00guest") + shortstr("en_US")))
        _, tune = self.expect_method(10, 30)
        self.server_tune = struct.unpack(">HIH", tune[:8])
        if upto == "tune":
            return
        self.send(method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, heartbeat)))
        if upto == "tune-ok":
            return
        self.send(method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
        self.expect_method(10, 41)

    def open_channel(self, n=1):
        self.send(method(n, 20, 10, shortstr("")))
        self.expect_method(20, 11)

    def outcome(self, timeout=None):
        """What the broker does next: reads until connection.close / eof / silence."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.time() + timeout
        seen = []
        while True:
            f = self.next_frame(max(0.0, deadline - time.time()))
            if f is None:
                if self.eof:
                    return "eof", seen
                return "HANG", seen
            kind, ch, p, end = f
            if kind == 1 and len(p) >= 4:
                cm = struct.unpack(">HH", p[:4])
                if cm == (10, 50):
                    code = struct.unpack(">H", p[4:6])[0]
                    text = p[7:7 + p[6]].decode(errors="replace")
                    seen.append(("close", code, text))
                    # Answer close-ok; the broker must then close the socket.
                    try:
                        self.send(method(0, 10, 51))
                    except OSError:
                        return "close:%d" % code, seen
                    t_end = time.time() + 3.5
                    while not self.eof and time.time() < t_end:
                        if not self._fill(t_end):
                            break
                        self.buf = b""
                    if not self.eof:
                        return "OPEN-AFTER-CLOSE:%d" % code, seen
                    return "close:%d" % code, seen
                if cm == (20, 40):
                    code = struct.unpack(">H", p[4:6])[0]
                    text = p[7:7 + p[6]].decode(errors="replace")
                    seen.append(("chclose", ch, code, text))
                    self.send(method(ch, 20, 41))
                    return "chclose:%d" % code, seen
                seen.append(("method", ch, cm))
            else:
                seen.append(("frame", kind, ch, len(p)))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- broker checks


def listening(ports):
    """Ports (of `ports`) with a socket in LISTEN state on this host."""
    found = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    port = int(parts[1].rsplit(":", 1)[1], 16)
                    if parts[3] == "0A" and port in ports:
                        found.add(port)
        except OSError:
            pass
    return found


class Broker:
    def __init__(self, args):
        self.args = args
        self.pid = args.pid
        self.log = args.log
        self.proc = None
        self.log_pos = 0
        self.linger = []

    def start(self):
        a = self.args
        logf = open(a.log, "ab")
        cmd = [a.broker_bin, "--data-dir", a.data_dir, "--shards", "2", "--placement", "unpinned",
               "--kafka-addr", "127.0.0.1:39092", "--amqp-addr", "%s:%d" % (HOST, PORT),
               "--http-addr", "127.0.0.1:38081"]
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        for attempt in range(50):
            self.proc = subprocess.Popen(cmd, stderr=logf, stdout=logf)
            self.pid = self.proc.pid
            for _ in range(300):
                if self.proc.poll() is not None:
                    break
                try:
                    socket.create_connection((HOST, PORT), timeout=1).close()
                    if attempt:
                        print("   (broker restart needed %d attempts: listener address still in use after kill -9)"
                              % (attempt + 1), flush=True)
                    return
                except OSError:
                    time.sleep(0.1)
            time.sleep(0.2)
        raise RuntimeError("broker did not start")

    def kill9(self):
        os.kill(self.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()
        else:
            time.sleep(0.5)
        # The killed process is reaped; its listening sockets should be gone with it.
        t0 = time.time()
        while listening([PORT, 39092, 38081]) and time.time() - t0 < 60:
            time.sleep(0.05)
        lingered = time.time() - t0
        self.linger.append(lingered)
        if lingered > 0.2:
            print("   (listening sockets outlived the killed broker by %.2f s)" % lingered, flush=True)

    def alive(self):
        if self.pid is None:
            return True
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            with open("/proc/%d/status" % self.pid) as f:
                st = f.read()
            return "zombie" not in st and "\nState:\tX" not in st
        except OSError:
            return False

    def rss_kb(self):
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None

    def new_log(self):
        """Log lines since the last call."""
        if not self.log or not os.path.exists(self.log):
            return []
        with open(self.log, "rb") as f:
            f.seek(self.log_pos)
            data = f.read()
            self.log_pos = f.tell()
        return data.decode(errors="replace").splitlines()

    def healthy(self):
        """Declare a queue, publish, get the message back, on a fresh raw connection."""
        try:
            c = Raw(timeout=5)
            c.handshake()
            c.open_channel(1)
            c.send(method(1, 50, 10, encode_args(50, 10, [0, "fz-health", 0, {}])))
            c.expect_method(50, 11)
            tag = os.urandom(6).hex().encode()
            c.send(publish(1, "fz-health", tag))
            for _ in range(20):
                c.send(method(1, 60, 70, encode_args(60, 70, [0, "fz-health", 1])))
                ch, p = None, None
                f = c.next_frame()
                if f is None:
                    return "get: no answer"
                kind, ch, p, _ = f
                cm = struct.unpack(">HH", p[:4])
                if cm == (60, 72):
                    time.sleep(0.05)
                    continue
                if cm != (60, 71):
                    return "get: %r" % (cm,)
                c.next_frame()  # header
                got = b""
                while True:
                    kind, ch, p, _ = c.next_frame()
                    got += p
                    if len(got) >= len(tag):
                        break
                if got == tag:
                    c.send(method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + b"\x00" * 4))
                    c.close()
                    return None
                # an older health message left behind: keep getting
            return "get: message never came back"
        except Exception as e:  # noqa
            return "health: %s" % e


# ---------------------------------------------------------------- case runner


class Runner:
    def __init__(self, broker, args):
        self.b = broker
        self.args = args
        self.results = []
        self.n = 0

    def case(self, name, data, expect=None, setup="channel", timeout=None, health=False, after=None):
        """Sends `data` after the handshake (+ channel 1 open) and classifies the answer.

        expect: set of acceptable outcome strings (None: any connection.close 5xx)."""
        self.n += 1
        try:
            c = Raw()
            if setup == "none":
                pass
            elif setup == "start":
                c.handshake(upto="start")
            elif setup == "tune":
                c.handshake(upto="tune")
            elif setup == "tune-ok":
                c.handshake(upto="tune-ok")
            else:
                c.handshake()
                if setup == "channel":
                    c.open_channel(1)
        except Exception as e:  # noqa
            self.record(name, "SETUP-FAILED", [str(e)], expect)
            return
        try:
            if callable(data):
                data(c)
            else:
                c.send(data)
        except OSError as e:
            pass
        out, seen = c.outcome(timeout)
        if after:
            after(c, out)
        c.close()
        self.record(name, out, seen, expect, health)

    def record(self, name, out, seen, expect, health=False):
        problems = []
        if out in ("eof", "SETUP-FAILED") or out.startswith("close:"):
            time.sleep(0.3)  # a dying broker closes its sockets before it is gone
        if not self.b.alive():
            problems.append("BROKER DEAD")
        logs = self.b.new_log()
        bad_logs = [l for l in logs if "panick" in l or "Z ERROR " in l or "overflow" in l.lower()
                    or "fatal" in l.lower()]
        if bad_logs:
            problems.append("LOG: " + " | ".join(bad_logs[-5:]))
        if expect is not None and out not in expect:
            problems.append("unexpected outcome %s (want %s)" % (out, "/".join(sorted(expect))))
        elif expect is None and not out.startswith("close:5"):
            problems.append("unexpected outcome %s" % out)
        if health or problems or self.n % self.args.health_every == 0:
            h = self.b.healthy() if self.b.alive() else "dead"
            if h:
                problems.append("HEALTH: " + h)
        r = {"case": name, "outcome": out, "seen": [list(map(str, s)) for s in seen][-3:],
             "problems": problems}
        self.results.append(r)
        if problems or self.args.verbose:
            print(("!! " if problems else "ok ") + name + " -> " + out + ("  " + "; ".join(problems) if problems else ""),
                  flush=True)
        if "BROKER DEAD" in problems:
            if self.args.stop_on_death:
                print("broker died; stopping", flush=True)
                sys.exit(2)
            if self.args.broker_bin:
                print("   (restarting the broker)", flush=True)
                time.sleep(0.5)
                self.b.start()

    def summary(self, label):
        bad = [r for r in self.results if r["problems"]]
        outs = {}
        for r in self.results:
            outs[r["outcome"]] = outs.get(r["outcome"], 0) + 1
        print("== %s: %d cases, %d with problems; outcomes %s" % (label, len(self.results), len(bad), outs),
              flush=True)
        return bad


FRAME_ERR = {"close:501"}
SYNTAX = {"close:501", "close:502"}
UNEXPECTED = {"close:505"}
CHANNEL_ERR = {"close:504"}


def mode_frames(r, args):
    fm = 131072
    q = encode_args(50, 10, [0, "fz-frames", 0, {}])
    cases = [
        ("random bytes 64", os.urandom(64), None),
        ("random bytes 4096", os.urandom(4096), None),
        ("all 0xff 64", b"\xff" * 64, FRAME_ERR),
        ("unknown frame type 4", frame(4, 1, b"abc"), FRAME_ERR),
        ("unknown frame type 0", frame(0, 0, b""), FRAME_ERR),
        ("wrong frame-end 0x00 method", method(1, 90, 10)[:-1] + b"\x00", FRAME_ERR),
        ("wrong frame-end on heartbeat", frame(8, 0, b"", end=0xCF), FRAME_ERR),
        ("frame size = frame_max-7 (over by 1)", frame(3, 1, b"x" * (fm - 7)), FRAME_ERR),
        ("frame size 0xffffffff header only", struct.pack(">BHI", 1, 1, 0xFFFFFFFF), FRAME_ERR),
        ("frame size 2*frame_max with data", frame(1, 1, b"\x00" * (2 * fm)), FRAME_ERR),
        ("size says 10, 3 bytes then end", struct.pack(">BHI", 1, 1, 10) + b"abc" + bytes([FRAME_END]) + b"\x00" * 7, FRAME_ERR),
        ("method payload empty", frame(1, 1, b""), SYNTAX),
        ("method payload 1 byte", frame(1, 1, b"\x00"), SYNTAX),
        ("method payload 3 bytes", frame(1, 1, b"\x00\x3c\x00"), SYNTAX),
        ("method payload empty ch0", frame(1, 0, b""), SYNTAX),
        ("unknown class 99.10", method(1, 99, 10), {"close:540", "close:503"}),
        ("unknown method 60.999", method(1, 60, 999), {"close:540", "close:503"}),
        ("unknown method 10.12 ch0", method(0, 10, 12), {"close:540", "close:503"}),
        ("method 0.0", method(1, 0, 0), {"close:540", "close:503"}),
        ("content header without publish", header(1, 5) + body(1, b"hello"), UNEXPECTED),
        ("content body without publish", body(1, b"hello"), UNEXPECTED),
        ("publish then body before header",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + body(1, b"hi"), UNEXPECTED),
        ("publish then method before header",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + method(1, 90, 10), UNEXPECTED),
        ("publish, header, method before body",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, 5) + method(1, 90, 10),
         UNEXPECTED),
        ("publish, header, second header",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, 5) + header(1, 5),
         UNEXPECTED),
        ("body larger than announced",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, 5) + body(1, b"x" * 100),
         {"close:501", "close:505"}),
        ("body in two frames, second overflows",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, 5) + body(1, b"xxx")
         + body(1, b"xxx"), {"close:501", "close:505"}),
        ("content header body size 2^63",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, 1 << 63)
         + body(1, b"x" * 1000), {"chclose:406", "close:501", "close:406"}),
        ("content header body size 2^64-1",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, (1 << 64) - 1),
         {"chclose:406", "close:501", "close:406"}),
        ("content header too short (10 bytes)",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + frame(2, 1, b"\x00\x3c" + b"\x00" * 8),
         FRAME_ERR),
        ("content header class 50",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, 1, cls=50) + body(1, b"x"),
         {"close:501", "close:505"}),
        ("content header bad property flags (all set, no data)",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, 1, props=b"\xff\xfe") + body(1, b"x"),
         SYNTAX),
        ("content header props continuation flag forever",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00") + header(1, 1, props=b"\x00\x01" * 5000) + body(1, b"x"),
         SYNTAX | {"OK"}),
        ("content header props short string overruns",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00")
         + header(1, 1, props=b"\x80\x00" + b"\xff" + b"ab") + body(1, b"x"), SYNTAX),
        ("content header props headers table overruns",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00")
         + header(1, 1, props=b"\x20\x00" + b"\xff\xff\xff\xff") + body(1, b"x"), SYNTAX),
        ("header frame on channel 0", header(0, 5), UNEXPECTED),
        ("body frame on channel 0", body(0, b"abc"), UNEXPECTED),
        ("method on unopened channel 2", method(2, 50, 10, q), CHANNEL_ERR),
        ("header on unopened channel 2", header(2, 5), CHANNEL_ERR | UNEXPECTED),
        ("body on unopened channel 2", body(2, b"x"), CHANNEL_ERR | UNEXPECTED),
        ("channel.open twice", method(1, 20, 10, shortstr("")), CHANNEL_ERR),
        ("channel 65535 open (channel_max 2047)", method(65535, 20, 10, shortstr("")), CHANNEL_ERR | {"close:530"}),
        ("channel 2048 open (channel_max 2047)", method(2048, 20, 10, shortstr("")), CHANNEL_ERR | {"close:530"}),
        ("heartbeat on channel 1", frame(8, 1, b""), UNEXPECTED),
        ("heartbeat with payload", frame(8, 0, b"abcd"), FRAME_ERR),
        ("basic.ack unknown tag", method(1, 60, 80, struct.pack(">Q", 999) + b"\x00"), {"chclose:406"}),
        ("basic.ack tag 0 multiple (nothing outstanding)", method(1, 60, 80, struct.pack(">Q", 0) + b"\x01"),
         {"chclose:406", "HANG"}),
        ("basic.nack unknown tag", method(1, 60, 120, struct.pack(">Q", 2 ** 63) + b"\x02"), {"chclose:406"}),
        ("basic.reject unknown tag", method(1, 60, 90, struct.pack(">Q", 5) + b"\x01"), {"chclose:406"}),
        ("basic.deliver from client", method(1, 60, 60, encode_args(60, 60)), {"close:503", "close:540"}),
        ("connection.start from client ch0", method(0, 10, 10, encode_args(10, 10)), {"close:503", "close:504"}),
        ("connection.tune-ok again", method(0, 10, 31, struct.pack(">HIH", 0, 131072, 0)), {"close:503"}),
        ("connection.open again", method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"), {"close:503"}),
        ("queue.declare on channel 0", method(0, 50, 10, q), {"close:503", "close:504"}),
        ("channel.open on channel 0", method(0, 20, 10, shortstr("")), {"close:503", "close:504"}),
        ("connection.close on channel 1", method(1, 10, 50, encode_args(10, 50)), {"close:503", "close:504"}),
        ("tx.commit without select", method(1, 90, 20), {"chclose:406"}),
        ("tx.select then confirm.select", method(1, 90, 10) + method(1, 85, 10, b"\x00"), {"chclose:406"}),
        ("confirm.select then tx.select", method(1, 85, 10, b"\x00") + method(1, 90, 10), {"chclose:406"}),
        ("qos prefetch_size 2^32-1", method(1, 60, 10, struct.pack(">IHB", 0xFFFFFFFF, 0, 0)),
         {"close:540", "chclose:540", "HANG"}),
        ("queue name 255 bytes of 0xff", method(1, 50, 10, b"\x00\x00" + bytes([255]) + b"\xff" * 255 + b"\x00" + table({})),
         SYNTAX | {"chclose:406", "HANG", "close:406"}),
        ("queue.declare x-max-priority 2^40", method(1, 50, 10, encode_args(50, 10, [0, "fz-prio", 0, {"x-max-priority": 2 ** 40}])),
         {"chclose:406"}),
        ("queue.declare x-max-length -1", method(1, 50, 10, encode_args(50, 10, [0, "fz-mlen", 0, {"x-max-length": -1}])),
         {"chclose:406"}),
        ("queue.declare x-message-ttl -5", method(1, 50, 10, encode_args(50, 10, [0, "fz-ttl", 0, {"x-message-ttl": -5}])),
         {"chclose:406"}),
        ("queue.declare x-expires 0", method(1, 50, 10, encode_args(50, 10, [0, "fz-exp", 0, {"x-expires": 0}])),
         {"chclose:406"}),
        ("queue.declare x-message-ttl as string", method(1, 50, 10, encode_args(50, 10, [0, "fz-ttl2", 0, {"x-message-ttl": "abc"}])),
         {"chclose:406"}),
        ("queue.declare x-queue-type bogus", method(1, 50, 10, encode_args(50, 10, [0, "fz-qt", 0, {"x-queue-type": "bogus"}])),
         {"chclose:406"}),
        ("queue.declare table type 'Z'", method(1, 50, 10, b"\x00\x00" + shortstr("fz-z") + b"\x00"
                                                + struct.pack(">I", 7) + shortstr("k") + b"Zabcd"), SYNTAX),
        ("queue.declare table len > payload", method(1, 50, 10, b"\x00\x00" + shortstr("fz-z") + b"\x00"
                                                    + struct.pack(">I", 1 << 30)), SYNTAX),
        ("queue.declare table longstr len 2^32-1", method(1, 50, 10, b"\x00\x00" + shortstr("fz-z") + b"\x00"
                                                         + struct.pack(">I", 7) + shortstr("k") + b"S\xff\xff\xff\xff"),
         SYNTAX),
        ("exchange.declare type bogus", method(1, 40, 10, encode_args(40, 10, [0, "fz-ex", "bogus", 0, {}])),
         {"close:503", "chclose:503", "chclose:406"}),
        ("exchange.declare amq.* name", method(1, 40, 10, encode_args(40, 10, [0, "amq.fz", "direct", 0, {}])),
         {"chclose:403"}),
        ("exchange.delete default", method(1, 40, 20, encode_args(40, 20, [0, "", 0])), {"chclose:403", "chclose:406"}),
        ("queue.bind to missing exchange", method(1, 50, 10, q) + method(1, 50, 20, encode_args(50, 20, [0, "fz-frames", "fz-nope", "k", 0, {}])),
         {"chclose:404"}),
        ("basic.consume missing queue", method(1, 60, 20, encode_args(60, 20, [0, "fz-nope", "", 0, {}])),
         {"chclose:404"}),
        ("basic.get missing queue", method(1, 60, 70, encode_args(60, 70, [0, "fz-nope", 0])), {"chclose:404"}),
        ("publish to missing exchange",
         method(1, 60, 40, b"\x00\x00" + shortstr("fz-nope") + shortstr("x") + b"\x00") + header(1, 1) + body(1, b"x"),
         {"chclose:404"}),
        ("publish expiration 'abc'",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00")
         + header(1, 1, props=b"\x01\x00" + shortstr("abc")) + body(1, b"x"), {"chclose:406"}),
        ("publish user-id mismatch",
         method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("x") + b"\x00")
         + header(1, 1, props=b"\x00\x10" + shortstr("root")) + body(1, b"x"), {"chclose:406"}),
        ("channel.close then method before close-ok",
         method(1, 20, 40, encode_args(20, 40)) + method(1, 50, 10, q), CHANNEL_ERR),
        ("connection.close-ok unsolicited", method(0, 10, 51), {"eof", "close:503"}),
    ]
    for name, data, expect in cases:
        r.case(name, data, expect)
    # handshake-phase cases
    pre = [
        ("bad protocol header AMQP0091", "none", b"AMQP\x00\x00\x09\x02", {"eof"}),
        ("HTTP request as header", "none", b"GET / HTTP/1.1\r\n\r\n", {"eof"}),
        ("start-ok with method frame on ch 1", "start", method(1, 10, 11, encode_args(10, 11)), {"close:503", "close:505", "close:504"}),
        ("start-ok mechanism EXTERNAL", "start", method(0, 10, 11, encode_args(10, 11, [{}, "EXTERNAL", "", "en_US"])), {"close:403", "close:540"}),
        ("start-ok bad password", "start", method(0, 10, 11, encode_args(10, 11, [{}, "PLAIN", "\x00guest\x00nope", "en_US"])), {"close:403"}),
        ("start-ok PLAIN response empty", "start", method(0, 10, 11, encode_args(10, 11, [{}, "PLAIN", "", "en_US"])), {"close:403", "close:502"}),
        ("start-ok PLAIN response no NULs", "start", method(0, 10, 11, encode_args(10, 11, [{}, "PLAIN", "guestguest", "en_US"])), {"close:403", "close:502"}),
        ("start-ok AMQPLAIN garbage", "start", method(0, 10, 11, encode_args(10, 11, [{}, "AMQPLAIN", "\xff\xff\xff", "en_US"])), {"close:403", "close:502"}),
        ("header frame during handshake", "start", header(0, 1), {"close:505", "close:503"}),
        ("heartbeat during handshake then nothing", "start", frame(8, 0, b""), {"close:0", "eof", "HANG"}),
        ("tune-ok frame_max 100", "tune", method(0, 10, 31, struct.pack(">HIH", 0, 100, 0)), {"close:530", "close:501"}),
        ("tune-ok frame_max 2^32-1", "tune", method(0, 10, 31, struct.pack(">HIH", 0, 0xFFFFFFFF, 0)) + method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00")
         + frame(1, 0, b"\x00" * 200000), FRAME_ERR),
        ("open unknown vhost", "tune-ok", method(0, 10, 40, shortstr("nope") + shortstr("") + b"\x00"), {"close:530"}),
        ("channel.open before connection.open", "tune-ok", method(1, 20, 10, shortstr("")), {"close:503", "close:504", "close:505"}),
        ("frame above frame_max during handshake", "start", frame(1, 0, b"\x00" * 140000), FRAME_ERR),
    ]
    for name, setup, data, expect in pre:
        r.case(name, data, expect, setup=setup)
    # Socket held open after the broker's close, timeouts
    r.case("partial frame header then silence (heartbeat 0)", struct.pack(">BH", 1, 1), {"HANG"}, timeout=3)
    r.case("handshake stall: protocol header only", PROTO, {"eof"}, setup="none", timeout=13)

    def hb(c):
        pass
    # Heartbeat: negotiate 1 s and send nothing; broker should drop us after ~2-3 s.
    t0 = time.time()

    def hb_setup(c):
        c.send(method(0, 10, 31, struct.pack(">HIH", 0, 131072, 1)) + method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
    r.case("heartbeat 1s, client silent", hb_setup, {"eof", "close:501", "close:320"}, setup="tune", timeout=8)
    print("   heartbeat case took %.1fs" % (time.time() - t0))
    return r.summary("frames")


def truncations():
    for (cls, mid), (name, fields) in METHODS.items():
        full = struct.pack(">HH", cls, mid) + encode_args(cls, mid)
        for n in range(0, len(full)):
            yield (cls, mid, name, full[:n], n, len(full))


def mode_truncate(r, args):
    for cls, mid, name, payload, n, full in truncations():
        label = "truncate %s(%d.%d) at %d/%d" % (name, cls, mid, n, full)
        if cls == 10 and mid in (11, 31, 40):
            # handshake methods: cut in their own phase
            setup = {11: "start", 31: "tune", 40: "tune-ok"}[mid]
            r.case(label, frame(1, 0, payload), SYNTAX, setup=setup)
            continue
        ch = 0 if cls == 10 else 1
        # Below 4 bytes there are no class/method ids: RabbitMQ says 501 FRAME_ERROR.
        expect = SYNTAX if n >= 4 else SYNTAX | {"close:540"}
        r.case(label, frame(1, ch, payload), expect)
    return r.summary("truncate")


def random_field(t, rnd):
    k = rnd.random()
    if t in ("s", "l", "L", "o") or t.startswith("b"):
        return rnd.choice([0, 1, -1, 2 ** 15, 2 ** 16 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 63, 2 ** 64 - 1, rnd.getrandbits(64)])
    if t == "S":
        if k < 0.3:
            return bytes([rnd.randrange(256) for _ in range(rnd.randrange(0, 256))])
        if k < 0.5:
            return "amq." + "x" * rnd.randrange(200)
        return rnd.choice(["", "/", "fz", "\u00e9" * 100, "a\x00b"])
    if t == "T":
        return bytes([rnd.randrange(256) for _ in range(rnd.randrange(0, 300))])
    if t == "t":
        return random_table_bytes(rnd, 3)
    raise ValueError(t)


def random_value_bytes(rnd, depth):
    t = rnd.choice("tbBuUsIiLlfdDSAxTFVZ")
    if t in "tbBuU" or t == "Z":
        return t.encode() + bytes([rnd.randrange(256)])
    if t in "sI" or t == "i" or t == "f":
        return (t.encode() + (os.urandom(2) if t == "s" else os.urandom(4)))
    if t in "lLdT":
        return t.encode() + os.urandom(8)
    if t == "D":
        return b"D" + os.urandom(5)
    if t in "Sx":
        n = rnd.choice([0, 3, 50, 0xFFFFFFFF, 0x7FFFFFFF])
        data = os.urandom(min(n, 60))
        return t.encode() + struct.pack(">I", n) + data
    if t == "A":
        inner = b"".join(random_value_bytes(rnd, depth - 1) for _ in range(rnd.randrange(3))) if depth > 0 else b""
        n = len(inner) if rnd.random() < 0.8 else rnd.choice([0xFFFFFFFF, len(inner) + 5, max(0, len(inner) - 1)])
        return b"A" + struct.pack(">I", n) + inner
    if t == "F":
        return b"F" + (random_table_bytes(rnd, depth - 1) if depth > 0 else struct.pack(">I", 0))
    if t == "V":
        return b"V"
    return b"?"


def random_table_bytes(rnd, depth):
    inner = b""
    for _ in range(rnd.randrange(4)):
        key = rnd.choice([b"x-max-length", b"x-message-ttl", b"x-dead-letter-exchange", b"x-max-priority",
                          b"x-queue-type", b"x-expires", b"alternate-exchange", b"x-match", b"k",
                          os.urandom(rnd.randrange(5))])
        inner += bytes([len(key)]) + key + random_value_bytes(rnd, depth)
    n = len(inner) if rnd.random() < 0.85 else rnd.choice([0xFFFFFFFF, len(inner) + 3, max(0, len(inner) - 2)])
    return struct.pack(">I", n) + inner


def mode_mutate(r, args):
    rnd = random.Random(args.seed)
    any_close = None
    for it in range(args.iterations):
        (cls, mid), (name, fields) = rnd.choice(list(METHODS.items()))
        if cls == 10 and mid in (11, 31, 40, 50, 51):
            continue  # handshake / close
        vals = [random_field(t, rnd) for t in fields]
        try:
            args_b = b"".join(encode_field(t, v) for t, v in zip(fields, vals))
        except Exception:
            continue
        payload = struct.pack(">HH", cls, mid) + args_b
        how = rnd.random()
        if how < 0.3 and payload:
            b = bytearray(payload)
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(4, len(b)) if len(b) > 4 else 0] = rnd.randrange(256)
            payload = bytes(b)
        ch = 0 if cls == 10 else 1
        data = frame(1, ch, payload)
        if (cls, mid) == (60, 40) and rnd.random() < 0.7:
            props = random_props(rnd)
            data += header(1, 3, props=props) + body(1, b"abc")
        label = "mutate#%d %s %s" % (it, name, payload[4:64].hex())
        # Any orderly answer is fine: a close, a channel close, a normal reply (HANG here
        # means "answered normally or nothing, connection still usable").
        r.case(label, data, expect=ANY_ORDERLY, timeout=1.0)
    return r.summary("mutate")


class _Any:
    def __contains__(self, x):
        return x.startswith("close:") or x.startswith("chclose:") or x == "HANG"

    def __iter__(self):
        return iter(["close:*", "chclose:*", "HANG"])


ANY_ORDERLY = _Any()


def random_props(rnd):
    flags = rnd.getrandbits(16) & 0xFFFE
    out = struct.pack(">H", flags)
    for i in range(14):
        if not flags & (1 << (15 - i)):
            continue
        if i == 2:
            out += random_table_bytes(rnd, 3)
        elif i in (3, 4):
            out += bytes([rnd.randrange(256)])
        elif i == 9:
            out += os.urandom(8)
        else:
            out += shortstr(os.urandom(rnd.randrange(0, 20)))
    if rnd.random() < 0.2:
        out = out[:rnd.randrange(len(out) + 1)]
    return out


def nested_table(depth, kind="F"):
    """A field table nested `depth` levels (kind F: tables, A: arrays)."""
    if kind == "F":
        inner = b""
        for _ in range(depth):
            inner = b"\x01k" + b"F" + struct.pack(">I", len(inner)) + inner
        return struct.pack(">I", len(inner)) + inner
    v = b""
    for _ in range(depth):
        v = b"A" + struct.pack(">I", len(v)) + v
    inner = b"\x01k" + v
    return struct.pack(">I", len(inner)) + inner


def mode_nest(r, args):
    for kind in ("F", "A"):
        for depth in (100, 1000, 2000, 5000, 18000):
            t = nested_table(depth, kind)
            if len(t) + 40 > 131072 - 8:
                continue
            payload = b"\x00\x00" + shortstr("fz-nest") + b"\x00" + t
            r.case("queue.declare args nested %s depth %d (%d B)" % (kind, depth, len(t)),
                   method(1, 50, 10, payload), ANY_ORDERLY, health=True)
    # Nested header table in a message published through the headers exchange, and
    # a nested table in client_properties during the handshake.
    for depth in (1000, 10000, 18000):
        t = nested_table(depth, "F")

        def pub(c, t=t):
            c.send(method(1, 50, 10, encode_args(50, 10, [0, "fz-hq", 0, {}])))
            c.expect_method(50, 11)
            c.send(method(1, 50, 20, encode_args(50, 20, [0, "fz-hq", "amq.headers", "", 0, {"x-match": "any", "a": "b"}])))
            c.expect_method(50, 21)
            c.send(method(1, 60, 40, b"\x00\x00" + shortstr("amq.headers") + shortstr("x") + b"\x00"))
            c.send(header(1, 1, props=b"\x20\x00" + t) + body(1, b"x"))
        r.case("publish to amq.headers with header table nested depth %d" % depth, pub, ANY_ORDERLY, health=True,
               timeout=2)
    # Dead-lettering decodes the header table too (x-death): TTL 0 + DLX.
    for depth in (1000, 10000):
        t = nested_table(depth, "F")

        def dlx(c, t=t):
            c.send(method(1, 50, 10, encode_args(50, 10, [0, "fz-dead", 0, {}])))
            c.expect_method(50, 11)
            c.send(method(1, 50, 10, encode_args(50, 10, [0, "fz-ttl0", 0, {
                "x-message-ttl": 0, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "fz-dead"}])))
            c.expect_method(50, 11)
            c.send(method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("fz-ttl0") + b"\x00"))
            c.send(header(1, 1, props=b"\x20\x00" + t) + body(1, b"x"))
        r.case("dead-letter a message with header table nested depth %d" % depth, dlx, ANY_ORDERLY, health=True,
               timeout=2)
    # AMQPLAIN response: a field table (without its length) inside a long string, before login.
    for depth in (1000, 10000, 18000):
        t = nested_table(depth, "F")
        r.case("start-ok AMQPLAIN response nested depth %d" % depth,
               method(0, 10, 11, table({}) + shortstr("AMQPLAIN") + longstr(t[4:]) + shortstr("en_US")),
               ANY_ORDERLY, setup="start", health=True, timeout=2)
    for depth in (1000, 10000, 18000):
        t = nested_table(depth, "F")
        r.case("start-ok client_properties nested depth %d" % depth,
               method(0, 10, 11, t + shortstr("PLAIN") + longstr("\x00guest\x00guest") + shortstr("en_US")),
               ANY_ORDERLY, setup="start", health=True, timeout=2)
    return r.summary("nest")


def mode_disconnect(r, args):
    data = b"y" * 300000
    seq = [method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("fz-disc") + b"\x00"), header(1, len(data)),
           body(1, data[:100000]), body(1, data[100000:200000]), body(1, data[200000:])]
    stream = b"".join(seq)
    cuts = sorted(set([0, 1, 5, 7, 8, 20] + [sum(len(s) for s in seq[:i]) + d for i in range(len(seq)) for d in (-1, 0, 1, 3, 7, 8)]
                      + [len(stream) // 2, len(stream) - 1, len(stream)]))
    for cut in cuts:
        if cut < 0 or cut > len(stream):
            continue
        try:
            c = Raw()
            c.handshake()
            c.open_channel(1)
            c.send(method(1, 50, 10, encode_args(50, 10, [0, "fz-disc", 0, {}])))
            c.expect_method(50, 11)
            c.send(stream[:cut])
            if random.random() < 0.5:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            c.close()
            r.record("disconnect after %d/%d bytes of a publish" % (cut, len(stream)), "dropped", [], {"dropped"})
        except Exception as e:  # noqa
            r.record("disconnect after %d" % cut, "SETUP-FAILED", [str(e)], {"dropped"})
    time.sleep(0.5)
    # Only complete publishes (cut == len(stream)) may be in the queue, each with the full body.
    c = Raw()
    c.handshake()
    c.open_channel(1)
    n = 0
    bad = 0
    while True:
        c.send(method(1, 60, 70, encode_args(60, 70, [0, "fz-disc", 1])))
        kind, ch, p, _ = c.next_frame()
        if struct.unpack(">HH", p[:4]) == (60, 72):
            break
        _, _, hp, _ = c.next_frame()
        size = struct.unpack(">Q", hp[4:12])[0]
        got = 0
        while got < size:
            _, _, bp, _ = c.next_frame()
            got += len(bp)
        n += 1
        if size != len(data):
            bad += 1
    c.close()
    print("   fz-disc holds %d message(s) (%d with a wrong size); complete publishes sent: 1" % (n, bad))
    if n != 1 or bad:
        r.record("disconnect: queue content", "messages=%d bad=%d" % (n, bad), [], {"messages=1 bad=0"})
    return r.summary("disconnect")


# ---------------------------------------------------------------- durable


def mode_durable(r, args):
    import pika
    b = r.b
    rnd = random.Random(args.seed)
    qname = "fz-durable"
    report = []
    params = pika.ConnectionParameters(HOST, PORT, heartbeat=0, blocked_connection_timeout=30)

    def connect():
        for _ in range(100):
            try:
                return pika.BlockingConnection(params)
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("cannot connect")

    def drain(expected_ids):
        """Consumes everything in the queue; returns counts of ids."""
        conn = connect()
        ch = conn.channel()
        counts = {}
        while True:
            m, props, bodyb = ch.basic_get(qname, auto_ack=True)
            if m is None:
                break
            k = bodyb.decode()
            counts[k] = counts.get(k, 0) + 1
        conn.close()
        return counts

    if b.proc is None:
        b.start()
    # clean slate
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(qname, durable=True)
    ch.queue_purge(qname)
    conn.close()

    for rnd_i in range(args.rounds):
        run_id = "r%d-%s" % (rnd_i, os.urandom(3).hex())
        confirmed = []
        kill_after = rnd.uniform(0.05, 1.5)
        # publisher in this process (pika is blocking): publish with confirms in a thread-free
        # loop and kill the broker from a timer signal.
        killer = {"done": False}

        def do_kill(signum, frame_):
            if not killer["done"]:
                killer["done"] = True
                b.kill9()

        signal.signal(signal.SIGALRM, do_kill)
        conn = connect()
        ch = conn.channel()
        ch.confirm_delivery()
        signal.setitimer(signal.ITIMER_REAL, kill_after)
        sent = 0
        try:
            for i in range(args.messages):
                mid = "%s-%d" % (run_id, i)
                sent += 1
                ch.basic_publish("", qname, mid.encode(), pika.BasicProperties(delivery_mode=2), mandatory=False)
                confirmed.append(mid)  # confirm_delivery: basic_publish returns once acked
        except Exception as e:  # noqa
            pass
        signal.setitimer(signal.ITIMER_REAL, 0)
        if not killer["done"]:
            killer["done"] = True
            b.kill9()
        try:
            conn.close()
        except Exception:
            pass
        b.start()
        counts = drain(None)
        mine = {k: v for k, v in counts.items() if k.startswith(run_id + "-")}
        lost = [m for m in confirmed if m not in mine]
        dups = {k: v for k, v in mine.items() if v > 1}
        unconfirmed_present = [k for k in mine if k not in set(confirmed)]
        line = ("publish round %d: kill after %.2fs, sent %d, confirmed %d, in queue %d, LOST %d, dups %d, "
                "unconfirmed-but-present %d" % (rnd_i, kill_after, sent, len(confirmed), len(mine), len(lost),
                                                len(dups), len(unconfirmed_present)))
        print("   " + line, flush=True)
        report.append(line)
        if lost:
            print("      lost e.g. %s" % lost[:5])
            r.record("durable publish round %d" % rnd_i, "LOST %d" % len(lost), [lost[:10]], {"ok"})
        if dups:
            r.record("durable publish round %d" % rnd_i, "DUPS %d" % len(dups), [list(dups.items())[:10]], {"ok"})
        r.b.new_log()

    # Pipelined confirms (raw client): all publishes sent back to back, acks read as they
    # come (single or multiple), broker killed after a random delay.
    for rnd_i in range(args.rounds):
        run_id = "p%d-%s" % (rnd_i, os.urandom(3).hex())
        c = Raw()
        c.handshake()
        c.open_channel(1)
        c.send(method(1, 85, 10, b"\x00"))
        c.expect_method(85, 11)
        stream = b"".join(publish(1, qname, ("%s-%d" % (run_id, i)).encode(), props=b"\x10\x00\x02")
                          for i in range(args.messages * 10))
        kill_after = rnd.uniform(0.005, 0.3)
        acked = set()
        c.sock.setblocking(False)
        t0 = time.time()
        pos = 0
        killed = False
        while True:
            if not killed and time.time() - t0 > kill_after:
                b.kill9()
                killed = True
            if pos < len(stream):
                try:
                    pos += c.sock.send(stream[pos:pos + 65536])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pos = len(stream)
            try:
                d = c.sock.recv(1 << 16)
                if not d:
                    break
                c.buf += d
            except (BlockingIOError, InterruptedError):
                if killed and time.time() - t0 > kill_after + 1:
                    break
                time.sleep(0.0005)
            except OSError:
                break
            while len(c.buf) >= 8:
                kind, ch, size = struct.unpack(">BHI", c.buf[:7])
                if len(c.buf) < 8 + size:
                    break
                p = c.buf[7:7 + size]
                c.buf = c.buf[8 + size:]
                if kind == 1 and p[:4] == struct.pack(">HH", 60, 80):
                    tag, mult = struct.unpack(">QB", p[4:13])
                    if mult:
                        acked.update(range(1, tag + 1))
                    else:
                        acked.add(tag)
        c.close()
        if not killed:
            b.kill9()
        b.start()
        counts = drain(None)
        mine = {k: v for k, v in counts.items() if k.startswith(run_id + "-")}
        confirmed = ["%s-%d" % (run_id, t - 1) for t in sorted(acked)]
        lost = [m for m in confirmed if m not in mine]
        dups = {k: v for k, v in mine.items() if v > 1}
        line = ("pipelined-confirm round %d: kill after %.3fs, sent %d B of %d, confirmed %d, in queue %d, LOST %d, "
                "dups %d" % (rnd_i, kill_after, pos, len(stream), len(confirmed), len(mine), len(lost), len(dups)))
        print("   " + line, flush=True)
        report.append(line)
        if lost:
            print("      lost e.g. %s" % lost[:5])
            r.record("durable pipelined round %d" % rnd_i, "LOST %d" % len(lost), [lost[:10]], {"ok"})
        if dups:
            r.record("durable pipelined round %d" % rnd_i, "DUPS %d" % len(dups), [list(dups.items())[:10]], {"ok"})
        r.b.new_log()

    # consume + ack: fill the queue, consume with manual acks, kill mid-stream. Every
    # message not acked must survive; acked ones should be gone (redelivery of a few
    # acked-but-not-yet-persisted messages is tolerated as at-least-once, counted).
    for rnd_i in range(args.rounds):
        run_id = "c%d-%s" % (rnd_i, os.urandom(3).hex())
        conn = connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ids = ["%s-%d" % (run_id, i) for i in range(args.messages)]
        for mid in ids:
            ch.basic_publish("", qname, mid.encode(), pika.BasicProperties(delivery_mode=2))
        conn.close()
        acked = []
        kill_after = rnd.uniform(0.05, 1.0)
        killer = {"done": False}

        def do_kill2(signum, frame_):
            if not killer["done"]:
                killer["done"] = True
                b.kill9()
        signal.signal(signal.SIGALRM, do_kill2)
        conn = connect()
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)
        signal.setitimer(signal.ITIMER_REAL, kill_after)
        try:
            for m, props, bodyb in ch.consume(qname, inactivity_timeout=2):
                if m is None:
                    break
                ch.basic_ack(m.delivery_tag)
                acked.append(bodyb.decode())
        except Exception:
            pass
        signal.setitimer(signal.ITIMER_REAL, 0)
        if not killer["done"]:
            killer["done"] = True
            b.kill9()
        b.start()
        counts = drain(None)
        mine = {k: v for k, v in counts.items() if k.startswith(run_id + "-")}
        acked_set = set(acked)
        missing = [m for m in ids if m not in acked_set and m not in mine]
        redelivered_acked = [m for m in mine if m in acked_set]
        dups = {k: v for k, v in mine.items() if v > 1}
        line = ("consume round %d: kill after %.2fs, acked %d/%d, left %d, LOST(unacked, missing) %d, "
                "acked-but-back %d, dups %d" % (rnd_i, kill_after, len(acked), len(ids), len(mine), len(missing),
                                               len(redelivered_acked), len(dups)))
        print("   " + line, flush=True)
        report.append(line)
        if missing:
            r.record("durable consume round %d" % rnd_i, "LOST %d" % len(missing), [missing[:10]], {"ok"})
        if dups:
            r.record("durable consume round %d" % rnd_i, "DUPS %d" % len(dups), [list(dups.items())[:10]], {"ok"})
        r.b.new_log()
    return r.summary("durable")


# ---------------------------------------------------------------- resources


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def mode_conns(r, args):
    b = r.b
    print("   before: rss %s kB, fds %s" % (b.rss_kb(), fd_count(b.pid)))
    socks = []
    for i in range(2000):
        try:
            c = Raw()
            c.handshake()
            if i % 2:
                c.open_channel(1)
                c.send(method(1, 60, 20, encode_args(60, 20, [0, "fz-health", "", 0, {}])))
            socks.append(c)
        except Exception as e:  # noqa
            print("   connection %d failed: %s" % (i, e))
            break
    print("   2000 open: rss %s kB, fds %s" % (b.rss_kb(), fd_count(b.pid)))
    for c in socks:
        if random.random() < 0.5:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    time.sleep(3)
    fds = fd_count(b.pid)
    print("   dropped: rss %s kB, fds %s" % (b.rss_kb(), fds))
    if args.conns_rounds > 1:
        for k in range(args.conns_rounds - 1):
            socks = []
            for i in range(2000):
                c = Raw()
                c.handshake()
                socks.append(c)
            for c in socks:
                c.close()
            time.sleep(2)
            print("   round %d (2000 more opened + dropped): rss %s kB, fds %s" % (k + 2, b.rss_kb(), fd_count(b.pid)))
        fds = fd_count(b.pid)
    r.record("2000 connections dropped", "fds=%s" % fds, [], None if False else ANY_FDS)
    return r.summary("conns")


class _AnyFds:
    def __contains__(self, x):
        try:
            return int(x.split("=")[1]) < 200
        except Exception:
            return False

    def __iter__(self):
        return iter(["fds<200"])


ANY_FDS = _AnyFds()


def mode_slowreader(r, args):
    import pika
    b = r.b
    q = "fz-slow"
    conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, PORT, heartbeat=0))
    ch = conn.channel()
    ch.queue_declare(q, durable=False)
    ch.queue_purge(q)
    payload = b"z" * 1024
    t0 = time.time()
    for i in range(args.slow_messages):
        ch.basic_publish("", q, payload)
    conn.close()
    print("   published %d x 1 KiB in %.1fs; rss %s kB" % (args.slow_messages, time.time() - t0, b.rss_kb()))
    # raw consumer that never reads
    c = Raw()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.handshake()
    c.open_channel(1)
    c.send(method(1, 60, 20, encode_args(60, 20, [0, q, "slow", 0b0010, {}])))  # no_ack=True
    samples = []
    for i in range(20):
        time.sleep(1)
        samples.append(b.rss_kb())
    print("   rss while the consumer does not read (no_ack, 1 s apart): %s" % samples)
    # prefetch-less manual-ack consumer that doesn't read
    c2 = Raw()
    c2.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c2.handshake()
    c2.open_channel(1)
    c2.send(method(1, 60, 20, encode_args(60, 20, [0, q, "slow2", 0, {}])))
    s2 = []
    for i in range(10):
        time.sleep(1)
        s2.append(b.rss_kb())
    print("   rss with a second (manual-ack, no prefetch) non-reading consumer: %s" % s2)
    c.close()
    c2.close()
    time.sleep(2)
    print("   after both closed: rss %s kB" % b.rss_kb())
    growth = max(samples + s2) - samples[0]
    r.record("slow reader rss growth %d kB" % growth, "growth=%d" % growth, [], GROWTH_OK)
    return r.summary("slowreader")


def mode_pipeline(r, args):
    """A client that keeps sending requests but never reads the replies: the broker's
    per-connection output buffer is the only place the replies can go."""
    b = r.b
    q = "fz-pipe"
    big = b"p" * (1 << 20)
    c = Raw()
    c.handshake()
    c.open_channel(1)
    c.send(method(1, 50, 10, encode_args(50, 10, [0, q, 0, {}])))
    c.expect_method(50, 11)
    c.send(method(1, 50, 30, encode_args(50, 30, [0, q, 0])))
    c.expect_method(50, 31)
    c.send(publish(1, q, big))
    time.sleep(0.5)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rss0 = b.rss_kb()
    # get (no_ack=false) + reject(requeue): 1 MiB of reply per ~40 bytes of request.
    sent = 0
    samples = []
    t0 = time.time()
    tag = 0
    c.sock.settimeout(2)
    try:
        while time.time() - t0 < args.pipeline_secs:
            batch = b""
            for _ in range(50):
                tag += 1
                batch += method(1, 60, 70, encode_args(60, 70, [0, q, 0]))
                batch += method(1, 60, 90, struct.pack(">Q", tag) + b"\x01")
            c.send(batch)
            sent += len(batch)
            if tag % 500 == 0:
                samples.append((round(time.time() - t0, 1), tag, b.rss_kb()))
            if b.rss_kb() and b.rss_kb() - rss0 > args.pipeline_limit_mb * 1024:
                break
    except OSError as e:
        samples.append(("send stopped", str(e)))
    rss1 = b.rss_kb()
    print("   get+reject pipelined without reading: %d requests (%d kB sent), rss %s -> %s kB" % (tag, sent // 1024, rss0, rss1))
    print("   samples (s, gets, rss kB): %s" % samples[-8:])
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    time.sleep(3)
    print("   after the client went away: rss %s kB" % b.rss_kb())
    r.record("pipelined get+reject, never reading: rss +%d kB" % (rss1 - rss0), "growth=%d" % (rss1 - rss0), [], GROWTH_OK)
    return r.summary("pipeline")


class _Growth:
    def __contains__(self, x):
        return int(x.split("=")[1]) < 200 * 1024

    def __iter__(self):
        return iter(["growth<200MB"])


GROWTH_OK = _Growth()

# ---------------------------------------------------------------- main


def main():
    global HOST, PORT, TIMEOUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modes", nargs="+")
    ap.add_argument("--host", default=HOST)
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--pid", type=int, help="broker pid to watch (when not started here)")
    ap.add_argument("--log", default="/tmp/fz/broker.log", help="broker stderr log to scan")
    ap.add_argument("--broker-bin", help="start/restart the broker (durable mode)")
    ap.add_argument("--data-dir", default="/tmp/fz/data")
    ap.add_argument("--timeout", type=float, default=TIMEOUT)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--slow-messages", type=int, default=100000)
    ap.add_argument("--pipeline-secs", type=float, default=30)
    ap.add_argument("--pipeline-limit-mb", type=int, default=2048, help="stop the pipeline test at this RSS growth")
    ap.add_argument("--conns-rounds", type=int, default=3)
    ap.add_argument("--health-every", type=int, default=25)
    ap.add_argument("--stop-on-death", action="store_true")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    HOST, PORT, TIMEOUT = args.host, args.port, args.timeout
    broker = Broker(args)
    broker.new_log()  # skip what is already there
    r = Runner(broker, args)
    if args.broker_bin and args.pid is None:
        broker.start()
        import atexit
        atexit.register(lambda: broker.proc and broker.proc.poll() is None and broker.proc.terminate())
    broker.new_log()
    bad = []
    for m in args.modes:
        fn = globals()["mode_" + m]
        bad += fn(r, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r.results, f, indent=1)
    print("== total: %d cases, %d with problems" % (len(r.results), len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
