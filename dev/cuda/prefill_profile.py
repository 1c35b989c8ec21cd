"""Summarises the Nsight Compute CSV of dev/cuda/prefill_probe.sh: the
kernels of the last prompt forward (from the last embedding gather on),
grouped by kernel name and grid, with their device time.

    python3 dev/cuda/prefill_profile.py ncu.csv [FLOPS_PER_GEMM_CALL...]
"""
import collections
import csv
import re
import sys

rows = []
with open(sys.argv[1]) as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r["Metric Name"] != "gpu__time_duration.sum":
        continue
    short = re.sub(r"\(.*", "", r["Kernel Name"]).replace("void ", "")
    rows.append((short, r["Grid Size"], float(r["Metric Value"].replace(",", "")) / 1e3))
starts = [i for i, r in enumerate(rows) if r[0].startswith("k_gather")]
seg = rows[starts[-1]:] if starts else rows
tot = sum(r[2] for r in seg)
print(f"{len(rows)} kernels profiled; the last forward: {len(seg)} kernels, {tot:.1f} us")
g = collections.OrderedDict()
for s, grid, us in seg:
    n, t = g.get((s, grid), (0, 0.0))
    g[(s, grid)] = (n + 1, t + us)
for (s, grid), (n, t) in sorted(g.items(), key=lambda kv: -kv[1][1])[:30]:
    print(f"{t:8.1f} us {100*t/tot:5.1f}%  n={n:3d} {t/n:7.2f} us each  {s[:70]} grid{grid}")
