"""One replayed decode step from an Nsight Systems GPU trace: each kernel's
start (from the step's first kernel), duration and the gap after the
previous kernel's end (negative: they overlap), then the step's span
against the sum of its kernels' durations.

    nsys profile -o rep --trace cuda mxc bench --device gpu ... -g 6 -n 1
    nsys stats --report cuda_gpu_trace --format csv --output rep rep.nsys-rep
    python3 dev/cuda/nsys_step.py rep_cuda_gpu_trace.csv [first] [count]
"""
import csv, re, sys

rows = []
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f):
        name = r.get("Name", "")
        if "[CUDA mem" in name:
            continue
        start, dur = float(r["Start (ns)"]), float(r["Duration (ns)"])
        short = re.sub(r"\(.*", "", name).replace("void ", "")
        short = re.sub(r"<.*", "", short)
        rows.append((start, dur, short))
rows.sort()
starts = [i for i, r in enumerate(rows) if r[2].startswith("k_gather")]
if len(starts) < 3:
    sys.exit("fewer than three steps in the trace")
a, b = starts[-2], starts[-1]
step = rows[a:b]
t0 = step[0][0]
span = step[-1][0] + step[-1][1] - t0
busy = sum(r[1] for r in step)
print(f"step of {len(step)} kernels: span {span / 1e3:.1f} us, kernel time {busy / 1e3:.1f} us")
first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
count = int(sys.argv[3]) if len(sys.argv) > 3 else 24
prev_end = None
gaps = {}
for i, (s, d, n) in enumerate(step):
    gap = (s - prev_end) / 1e3 if prev_end is not None else 0.0
    g = gaps.setdefault(n, [0, 0.0, 0.0])
    g[0] += 1
    g[1] += d / 1e3
    g[2] += gap
    if first <= i < first + count:
        print(f"{i:4d} {(s - t0) / 1e3:8.2f} {d / 1e3:7.2f} {gap:7.2f}  {n}")
    prev_end = s + d if prev_end is None else max(prev_end, s + d)
print("per kernel: count, device us, sum of gaps before it (us)")
for n, (c, d, g) in sorted(gaps.items(), key=lambda kv: -kv[1][1]):
    print(f"  {c:4d} {d:8.1f} {g:8.1f}  {n}")
