#!/usr/bin/env python3
"""Memory attacks against a fresh broker with default settings, reporting its RSS before and after each.

    bench/attacks.py [--bin target/release/halyard] [--mosquitto] [ATTACK...]

Attacks (all by default):
  aliases   one MQTT 5 connection registers topic aliases with 60 KiB topics until the broker refuses
  partial   5,000 connections each announce a 1 MB PUBLISH and send 10 bytes of it
  subs      one client subscribes to 100,000 distinct filters (1,000 per SUBSCRIBE)

Each attack gets its own broker (fresh data dir, loopback port, every other setting its default), started by
this script and stopped at the end. RSS is read from /proc/<pid>/status. Only loopback is used; every loop is
bounded in count and time. With --mosquitto the same attacks run against Mosquitto (`mosquitto -p PORT`) for
comparison.
"""

import argparse
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

PORT = 18891


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(client_id, v5=True, keepalive=0):
    if v5:
        body = mqtt_str("MQTT") + bytes([5, 0x02]) + struct.pack(">H", keepalive) + b"\x00" + mqtt_str(client_id)
    else:
        body = mqtt_str("MQTT") + bytes([4, 0x02]) + struct.pack(">H", keepalive) + mqtt_str(client_id)
    return packet(0x10, body)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Broker:
    def __init__(self, args):
        self.dir = tempfile.mkdtemp(prefix="halyard-attack-")
        env = dict(os.environ)
        if args.mosquitto:
            conf = os.path.join(self.dir, "m.conf")
            with open(conf, "w") as f:
                f.write(f"listener {PORT} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n")
            cmd = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf]
        else:
            env["HALYARD_LISTENERS__TCP__DEFAULT__BIND"] = f"127.0.0.1:{PORT}"
            # TCP only, like the Mosquitto it is compared with: no TLS/WebSocket listeners on 8883/8083/8084.
            for kind in ("SSL", "WS", "WSS"):
                env[f"HALYARD_LISTENERS__{kind}__DEFAULT__ENABLE"] = "false"
            env["HALYARD_NODE__DATA_DIR"] = os.path.join(self.dir, "data")
            env["HALYARD_LOG__LEVEL"] = "warn"
            cmd = [args.bin, "start"]
        self.log = open(os.path.join(self.dir, "broker.log"), "w")
        self.p = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=raise_fd_limit)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("broker did not start")
        time.sleep(0.5)

    def rss(self):
        return rss_kib(self.p.pid)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def recv_some(s, timeout=2.0):
    s.settimeout(timeout)
    try:
        return s.recv(65536)
    except socket.timeout:
        return None
    except OSError:
        return b""


def attack_aliases(b):
    import select
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(connect("attack-aliases"))
    recv_some(s)
    sent = 0
    outcome = "never refused"
    for alias in range(1, 65536):
        topic = f"{alias}/".encode() + b"t" * (60 * 1024)
        props = b"\x23" + struct.pack(">H", alias)  # Topic Alias
        body = mqtt_str(topic) + varint(len(props)) + props + b"x"
        try:
            s.sendall(packet(0x30, body))
        except OSError:
            outcome = f"connection closed after {sent} aliases sent"
            break
        sent += 1
        # Give the broker a moment to answer this one before the next (bounded: 20 ms per alias).
        ready, _, _ = select.select([s], [], [], 0.02)
        if ready:
            data = s.recv(65536)
            code = data[2] if len(data) > 2 and data[0] == 0xE0 else None
            outcome = f"refused at alias {sent}" + (f" (DISCONNECT {code:#04x})" if code is not None else " (closed)")
            break
        if sent * 60 * 1024 > 256 * 1024 * 1024:
            outcome = f"still accepting after {sent} aliases ({sent * 60} KiB)"
            break
    time.sleep(0.5)
    rss = b.rss()
    s.close()
    return outcome, rss


def attack_partial(b, n=5000):
    socks = []
    # A QoS 0 PUBLISH announcing 1 MB in all (1 + 3 header bytes + 1,048,572), of which 10 bytes are sent.
    header = bytes([0x30]) + varint(1024 * 1024 - 4)
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", PORT))
        s.sendall(connect(f"attack-partial-{i}", v5=False))
        socks.append(s)
    for s in socks:
        recv_some(s, 5)
    for s in socks:
        s.sendall(header + b"\x00\x03a/bx")
    time.sleep(2)
    rss = b.rss()
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += 0 if s.recv(1) == b"" else 1
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    for s in socks:
        s.close()
    return f"{n} connections, 10 bytes each of a 1 MB packet; {alive} still open", rss


def attack_subs(b, total=100_000, per=1000):
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(connect("attack-subs"))
    recv_some(s)
    granted = refused = 0
    pid = 1
    for start in range(0, total, per):
        payload = b"".join(mqtt_str(f"attack/{i}/x") + b"\x00" for i in range(start, start + per))
        body = struct.pack(">H", pid) + b"\x00" + payload
        s.sendall(packet(0x82, body))
        pid = pid % 65535 + 1
        buf = b""
        s.settimeout(10)
        # SUBACK: fixed header, packet id, properties length 0, one code per filter.
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return f"closed after {granted} granted", b.rss()
            buf += chunk
            if len(buf) >= 2:
                # Remaining length is at most 2 bytes here (1,003 bytes).
                rl, used = buf[1] & 0x7F, 1
                if buf[1] & 0x80:
                    rl += (buf[2] & 0x7F) << 7
                    used = 2
                if len(buf) >= 1 + used + rl:
                    codes = buf[1 + used + 3 : 1 + used + rl]
                    granted += sum(1 for c in codes if c < 0x80)
                    refused += sum(1 for c in codes if c >= 0x80)
                    break
    time.sleep(0.5)
    rss = b.rss()
    s.close()
    return f"{granted} granted, {refused} refused", rss


ATTACKS = {"aliases": attack_aliases, "partial": attack_partial, "subs": attack_subs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "halyard"))
    ap.add_argument("--mosquitto", action="store_true")
    ap.add_argument("attacks", nargs="*", default=list(ATTACKS))
    args = ap.parse_args()
    raise_fd_limit()
    name = "mosquitto" if args.mosquitto else "halyard"
    print(f"| attack ({name}) | outcome | RSS before | RSS after | broker alive |")
    print("|---|---|---|---|---|")
    for a in args.attacks:
        b = Broker(args)
        try:
            before = b.rss()
            outcome, after = ATTACKS[a](b)
            print(f"| {a} | {outcome} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB | {b.alive()} |", flush=True)
        finally:
            b.stop()


if __name__ == "__main__":
    sys.exit(main())
