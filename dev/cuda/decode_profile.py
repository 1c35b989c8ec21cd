"""Summarises bench/profile-decode-gpu.sh's Nsight Compute CSV: the kernels
of the last decode step (from the last embedding gather on), grouped by
kernel and grid, with their device time.

    python3 dev/cuda/decode_profile.py ncu-bf16.csv [--all]
"""
import csv, re, sys, collections

rows = []
with open(sys.argv[1]) as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r["Metric Name"] != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"]
    short = re.sub(r"\(.*", "", name).replace("void ", "")
    rows.append((short, r["Grid Size"], r["Block Size"], float(r["Metric Value"].replace(",", "")) / 1e3))
starts = [i for i, r in enumerate(rows) if r[0].startswith("k_gather")]
a = starts[-1]
# the step before the last one (the last may be cut off)
if len(starts) >= 2 and len(rows) - a < (a - starts[-2]) * 0.9:
    a, b = starts[-2], starts[-1]
else:
    b = len(rows)
step = rows[a:b]
print(f"{len(rows)} kernels profiled; step {a}..{b}: {len(step)} kernels, "
      f"{sum(r[3] for r in step):.1f} us of kernel time")
g = collections.OrderedDict()
for s, grid, blk, us in step:
    k = (s, grid, blk)
    n, t = g.get(k, (0, 0.0))
    g[k] = (n + 1, t + us)
tot = sum(t for n, t in g.values())
for (s, grid, blk), (n, t) in sorted(g.items(), key=lambda kv: -kv[1][1]):
    print(f"{t:8.1f} us {100*t/tot:5.1f}%  n={n:3d}  {t/n:6.2f} us each  {s[:60]} grid{grid} blk{blk}")
if "--all" in sys.argv:
    for r in step[:40]:
        print(r)
