#!/usr/bin/env python3
"""Experiment (issue 25): what does the ifb itself cost a busy node's download?

N pods on one bridge download from one server at once, each through a TBF of
the same parameters placed either on its host veth's egress ("host", the
reference's place) or on an ifb in the pod's netns fed by mirred from eth0's
ingress ("ifb", our place), with no BPF at all; plus an unshaped control.
Reports CPU-s per Gbit delivered for each, in rounds whose order alternates.
Run as root on a quiet machine, from the repository:
    sudo python3 bench/ifb_cost.py [PODS] [RATE_MBIT] [ROUNDS] | tee bench/results/ifb-cost.txt
Needs only ip, tc (iproute2) and iperf3; bpf-ratelimit is not involved. The
TBF is the same in both places (rate, 256 KB bucket, limit max(rate x 20 ms,
256 KB)); its child is TBF's default bfifo. The mirred filter is a classic
BPF "accept all" (cls_bpf), since this host's kernel has no matchall.
"""
import json, subprocess, sys, time

PODS = int(sys.argv[1]) if len(sys.argv) > 1 else 40
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 50
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
SECS, OMIT = 8, 2
BR, SNS = "xbr0", "xsrv"
SERVER = "10.250.0.1"


def sh(cmd, check=True):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and r.returncode:
        raise SystemExit(f"{cmd}: {r.stderr.strip()}")
    return r.stdout


def pod(i):
    return f"xp{i}"


def setup():
    sh(f"ip link add {BR} type bridge && ip link set {BR} up")
    sh(f"ip netns add {SNS}")
    sh(f"ip link add xsv type veth peer name eth0 netns {SNS}")
    sh(f"ip link set xsv master {BR} up")
    sh(f"ip -n {SNS} addr add {SERVER}/16 dev eth0 && ip -n {SNS} link set eth0 up && ip -n {SNS} link set lo up")
    for i in range(PODS):
        ns = pod(i)
        sh(f"ip netns add {ns}")
        sh(f"ip link add xh{i} type veth peer name eth0 netns {ns}")
        sh(f"ip link set xh{i} master {BR} up")
        sh(f"ip -n {ns} addr add 10.250.{1 + i // 250}.{1 + i % 250}/16 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up")
        sh(f"ip link add xifb{i} netns {ns} type ifb")
    for i in range(PODS):
        sh(f"ip netns exec {SNS} iperf3 -s -D -p {7000 + i}")
    time.sleep(1)


def teardown():
    sh(f"ip netns pids {SNS} | xargs -r kill", check=False)
    for i in range(PODS):
        sh(f"ip netns del {pod(i)}", check=False)
    sh(f"ip netns del {SNS}", check=False)
    sh(f"ip link del {BR}", check=False)


def tbf():
    limit = max(RATE * 1_000_000 // 8 * 20 // 1000, 256 * 1024)
    return f"tbf rate {RATE}mbit burst 256kb limit {limit}"


def place(mode):
    for i in range(PODS):
        ns = pod(i)
        sh(f"tc qdisc del dev xh{i} root", check=False)
        sh(f"ip netns exec {ns} tc qdisc del dev eth0 ingress", check=False)
        sh(f"ip netns exec {ns} tc qdisc del dev xifb{i} root", check=False)
        sh(f"ip -n {ns} link set xifb{i} down")
        if mode == "host":
            sh(f"tc qdisc add dev xh{i} root handle 1: {tbf()}")
        elif mode == "ifb":
            sh(f"ip -n {ns} link set xifb{i} up")
            sh(f"ip netns exec {ns} tc qdisc add dev xifb{i} root handle 1: {tbf()}")
            sh(f"ip netns exec {ns} tc qdisc add dev eth0 ingress")
            sh(f"ip netns exec {ns} tc filter add dev eth0 parent ffff: bpf bytecode '1,6 0 0 4294967295,' action mirred egress redirect dev xifb{i}")


def cpu():
    f = open("/proc/stat").readline().split()[1:]
    v = list(map(int, f))
    idle = v[3] + v[4]
    return sum(v), idle


def run(mode):
    place(mode)
    procs = [subprocess.Popen(f"ip netns exec {pod(i)} iperf3 -c {SERVER} -p {7000 + i} -R -t {SECS} -O {OMIT} -J",
                              shell=True, stdout=subprocess.PIPE, text=True) for i in range(PODS)]
    time.sleep(OMIT + 1)
    t0, i0 = cpu()
    w0 = time.time()
    time.sleep(SECS - OMIT - 2)
    t1, i1 = cpu()
    w1 = time.time()
    total = 0.0
    for i, p in enumerate(procs):
        out, _ = p.communicate()
        got = json.loads(out or "{}")
        if p.returncode or "error" in got or "end" not in got:
            raise SystemExit(f"{mode}: iperf3 in pod {i} failed (exit {p.returncode}): {got.get('error', out[-300:])}")
        total += got["end"]["sum_received"]["bits_per_second"]
    busy = 1 - (i1 - i0) / (t1 - t0)
    ncpu = int(sh("nproc"))
    cpu_s = busy * ncpu * (w1 - w0)
    gbit = total * (w1 - w0) / 1e9
    per_pod = total / PODS / (RATE * 1e6)
    # Each row proves what it measured: the TBF held every pod's goodput to
    # its limit (~0.956 of it for bulk TCP), and the control was not held.
    if mode != "none" and not 0.90 <= per_pod <= 1.0:
        raise SystemExit(f"{mode}: pods got {per_pod:.3f} of the limit in goodput on average; the TBF did not shape")
    if mode == "none" and per_pod < 2.0:
        raise SystemExit(f"control: unshaped pods got only {per_pod:.2f}x the limit; the comparison needs a path well above it")
    return {"mode": mode, "gbps": total / 1e9, "busy": busy, "cpu_s_per_gbit": cpu_s / gbit, "per_pod": per_pod}


def main():
    head = sh("git rev-parse --short HEAD", check=False).strip()
    dirty = bool(sh("git status --porcelain --untracked-files=no -- . ':(exclude)bench/results'", check=False).strip())
    print(f"# bench/ifb_cost.py {PODS} {RATE} {ROUNDS} at {head}{' (uncommitted changes)' if dirty else ''}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, kernel {sh('uname -r').strip()}, {sh('nproc').strip()} CPUs", flush=True)
    teardown()
    setup()
    try:
        res = {"none": [], "host": [], "ifb": []}
        r = run("none")
        res["none"].append(r)
        print(r, flush=True)
        for k in range(ROUNDS):
            for mode in (("host", "ifb") if k % 2 == 0 else ("ifb", "host")):
                r = run(mode)
                res[mode].append(r)
                print(r, flush=True)
        ratios = [i["cpu_s_per_gbit"] / h["cpu_s_per_gbit"] for h, i in zip(res["host"], res["ifb"])]
        print(f"{PODS} x {RATE}M download: ifb / host CPU per Gbit by round: " + ", ".join(f"{x:.2f}" for x in ratios))
    finally:
        teardown()


if __name__ == "__main__":
    main()
