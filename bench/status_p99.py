#!/usr/bin/env python3
"""N STATUS calls of BINARY on a pin root with no datapath pinned; p50/p99/max in ms."""
import subprocess, sys, time, os
binary, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200
conf = b'{"cniVersion":"1.1.0","name":"statusbench","type":"bpf-ratelimit","pinRoot":"/sys/fs/bpf/brl-statusbench"}'
env = dict(os.environ, CNI_COMMAND="STATUS")
t = []
for _ in range(n):
    s = time.perf_counter()
    r = subprocess.run([binary], input=conf, env=env, capture_output=True)
    t.append((time.perf_counter() - s) * 1e3)
    assert r.returncode == 0, r.stdout
t.sort()
print(f"{os.path.basename(binary)}: n={n} p50={t[n//2]:.2f} ms p99={t[int(n*0.99)-1]:.2f} ms max={t[-1]:.2f} ms")
