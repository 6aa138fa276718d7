#!/usr/bin/env python3
"""Traffic that real pods make, for the workload tests (tests/workloads.rs).

iperf3 covers bulk flows; this covers the rest:

  serve PORT                       request/response server: each request is
                                   an 8-byte header (request and response
                                   sizes, big-endian u32) and the request
                                   bytes; the reply is the response bytes.
  requests HOST PORT SIZE COUNT GAP_MS [RESPONSE] [fresh] [within=SECONDS]
                                   one request of SIZE bytes every GAP_MS on
                                   a keep-alive connection (with "fresh": a
                                   new connection each, its handshake
                                   timed too), answered with RESPONSE bytes
                                   (64); with within=SECONDS, no request is
                                   started after SECONDS (those started are
                                   waited for); after one untimed request,
                                   prints latency percentiles (ms, nearest
                                   rank) as JSON. With "open": open loop,
                                   every request started on schedule on
                                   its own connection whatever the others
                                   are doing, so every row of a comparison
                                   gets COUNT samples.
  light HOST PORT CONNS BPS SECONDS
                                   CONNS keep-alive connections each sending
                                   BPS bits/s in 10 requests a second.
  raw IFNAME COUNT SIZE            AF_PACKET frames on IFNAME; prints what
                                   sendto() and PACKET_QDISC_BYPASS did.
  udpecho PORT                     UDP echo server: sends every datagram back.
  udpping HOST PORT SECONDS        a 64-byte datagram every 20 ms, each
                                   waiting up to 200 ms for its echo, as DNS
                                   or a heartbeat does; prints what was
                                   sent and answered and the answers' round
                                   trip percentiles (ms) as JSON.
  udp6ext HOST PORT SECONDS SIZE GSO
                                   UDP over IPv6 with a destination options
                                   header on every packet, SIZE bytes a
                                   send (in GSO-byte segments with
                                   UDP_SEGMENT, unless GSO is 0), as fast as
                                   the socket takes them.
  flows HOST COUNT SECONDS         one 16-byte UDP datagram on each of COUNT
                                   distinct flows (4 source ports x COUNT/4
                                   destination ports from 10000), spread
                                   evenly over SECONDS; prints how many
                                   were sent.

Every command ends by itself; the tests bound them with timeouts too.
"""
import errno
import json
import math
import socket
import struct
import sys
import threading
import time


def recv_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


def serve(port):
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(128)

    def handle(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                req, resp = struct.unpack("!II", recv_exact(conn, 8))
                recv_exact(conn, req)
                conn.sendall(b"r" * resp)
        except (ConnectionError, OSError):
            conn.close()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def connect(host, port):
    conn = socket.create_connection((host, port), timeout=5)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def requests(host, port, size, count, gap_ms, response=64, fresh=False, within=None, open_=False):
    if open_:
        report(*open_loop(host, port, size, count, gap_ms, response))
        return
    deadline = None if within is None else time.monotonic() + within
    conn = None if fresh else connect(host, port)
    payload = struct.pack("!II", size, response) + b"q" * size
    samples, failed = [], 0
    # One untimed exchange first: the neighbour entry, the server's first
    # thread and Python's lazy set-up are the harness's cost, not the path's.
    warm = connect(host, port) if fresh else conn
    warm.sendall(payload)
    recv_exact(warm, response)
    if fresh:
        warm.close()
    time.sleep(gap_ms / 1000)
    for _ in range(count):
        start = time.monotonic()
        if deadline is not None and start >= deadline:
            break
        try:
            if fresh:
                conn = connect(host, port)
            conn.sendall(payload)
            recv_exact(conn, response)
            samples.append((time.monotonic() - start) * 1000)
            if fresh:
                conn.close()
        except OSError:
            failed += 1
            if conn is not None:
                conn.close()
            conn = None if fresh else connect(host, port)
        time.sleep(gap_ms / 1000)
    report(samples, failed)


def report(samples, failed):
    samples.sort()
    # Nearest rank: p99 of 50 samples is the largest, of 200 the third largest.
    pick = lambda q: samples[max(0, math.ceil(q * len(samples)) - 1)] if samples else None
    print(json.dumps({"p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": samples[-1] if samples else None,
                      "samples": len(samples), "failed": failed}))


def open_loop(host, port, size, count, gap_ms, response):
    """`count` requests started every `gap_ms` whatever the earlier ones are
    doing (each on its own connection, in its own thread): a slow shaper
    cannot thin the samples out by holding the next request back, as a
    closed loop lets it. Each may take up to OPEN_LOOP_TIMEOUT_S."""
    payload = struct.pack("!II", size, response) + b"q" * size
    warm = connect(host, port)
    warm.sendall(payload)
    recv_exact(warm, response)
    warm.close()
    samples, failed, lock = [], [0], threading.Lock()

    def one(due):
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        start = time.monotonic()
        try:
            conn = socket.create_connection((host, port), timeout=OPEN_LOOP_TIMEOUT_S)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(payload)
            recv_exact(conn, response)
            conn.close()
            with lock:
                samples.append((time.monotonic() - start) * 1000)
        except OSError:
            with lock:
                failed[0] += 1

    t0 = time.monotonic() + gap_ms / 1000
    threads = [threading.Thread(target=one, args=(t0 + i * gap_ms / 1000,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, failed[0]


OPEN_LOOP_TIMEOUT_S = 60


def light(host, port, conns, bps, seconds):
    size = max(1, bps // 8 // 10)
    payload = struct.pack("!II", size, 16) + b"l" * size
    socks = [connect(host, port) for _ in range(conns)]
    deadline = time.monotonic() + seconds
    sent = 0
    rounds = []  # seconds from a round's first send to its last answer
    while time.monotonic() < deadline:
        tick = time.monotonic()
        for s in socks:
            s.sendall(payload)
            sent += len(payload)
        for s in socks:
            recv_exact(s, 16)
        rounds.append(time.monotonic() - tick)
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    rounds.sort()
    pick = lambda q: rounds[min(len(rounds) - 1, int(q * len(rounds)))] * 1000 if rounds else None
    print(json.dumps({"bytes_sent": sent, "asked_bytes": conns * len(payload) * 10 * seconds,
                      "rounds": len(rounds), "round_p50_ms": pick(0.5), "round_p99_ms": pick(0.99)}))


def raw(ifname, count, size):
    out = {}
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
    s.bind((ifname, 0))
    try:
        s.setsockopt(263, 20, struct.pack("i", 1))  # SOL_PACKET, PACKET_QDISC_BYPASS
        out["qdisc_bypass"] = "allowed"
    except OSError as e:
        out["qdisc_bypass"] = errno.errorcode.get(e.errno, str(e.errno))
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"x" * (size - 14)
    sent, errors = 0, {}
    for _ in range(count):
        try:
            s.send(frame)
            sent += 1
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
    out.update({"sent": sent, "errors": errors})
    print(json.dumps(out))


def udp6ext(host, port, seconds, size, gso):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    # Destination options: next header (the kernel fills it), length 0
    # (8 bytes), a PadN option of 6 bytes.
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
    if gso:
        s.setsockopt(socket.IPPROTO_UDP, 103, gso)  # UDP_SEGMENT
    payload = b"e" * size
    deadline = time.monotonic() + seconds
    sent, errors = 0, {}
    while time.monotonic() < deadline:
        try:
            s.sendto(payload, (host, port))
            sent += 1
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
            time.sleep(0.0005)
    print(json.dumps({"sent": sent, "errors": errors}))


def flows(host, count, seconds):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    start = time.monotonic()
    sent, errors = 0, {}
    for i in range(count):
        try:
            socks[i % 4].sendto(b"f" * 16, (host, 10000 + i // 4))
            sent += 1
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
        if i % 500 == 499:
            time.sleep(max(0.0, start + (i + 1) / count * seconds - time.monotonic()))
    print(json.dumps({"sent": sent, "errors": errors}))


def udpecho(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def udpping(host, port, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    sent, answered, rtts = 0, 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.monotonic()
        s.sendto(b"q" * 64, (host, port))
        sent += 1
        try:
            s.recvfrom(2048)
            answered += 1
            rtts.append((time.monotonic() - start) * 1000)
        except socket.timeout:
            pass
        time.sleep(max(0.0, 0.02 - (time.monotonic() - start)))
    rtts.sort()
    pick = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] if rtts else None
    print(json.dumps({"sent": sent, "answered": answered, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}))


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "serve":
        serve(int(args[0]))
    elif cmd == "requests":
        extra = args[6:]
        within = next((float(a.split("=", 1)[1]) for a in extra if a.startswith("within=")), None)
        requests(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]),
                 int(args[5]) if len(args) > 5 else 64, "fresh" in extra, within, "open" in extra)
    elif cmd == "light":
        light(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]))
    elif cmd == "raw":
        raw(args[0], int(args[1]), int(args[2]))
    elif cmd == "flows":
        flows(args[0], int(args[1]), float(args[2]))
    elif cmd == "udpecho":
        udpecho(int(args[0]))
    elif cmd == "udpping":
        udpping(args[0], int(args[1]), float(args[2]))
    elif cmd == "udp6ext":
        udp6ext(args[0], int(args[1]), float(args[2]), int(args[3]), int(args[4]))
    else:
        sys.exit(f"unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
