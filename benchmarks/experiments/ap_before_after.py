"""VOC AP over 5 000 pairs x 100 boxes: the tuned version at BEFORE_REV (bucket sort, chunked IoU) vs
the plain vectorised one in the tree vs the per-image loop, interleaved in one run, medians.

    BEFORE_REV=8694247 .venv/bin/python benchmarks/experiments/ap_before_after.py [rounds]
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_ap import make_inputs  # noqa: E402

from spotdiff.evaluation import metrics as new  # noqa: E402

rev = os.environ.get("BEFORE_REV", "8694247")
old_src = subprocess.run(["git", "show", f"{rev}:src/spotdiff/evaluation/metrics.py"], capture_output=True, text=True, check=True).stdout
old_path = os.path.join(tempfile.mkdtemp(), "metrics_old.py")
with open(old_path, "w") as fh:
    fh.write(old_src)
spec = importlib.util.spec_from_file_location("metrics_old", old_path)
old = importlib.util.module_from_spec(spec)
sys.modules["metrics_old"] = old  # (dataclasses look their module up)
spec.loader.exec_module(old)
gts, dets, scores = make_inputs(10000, 100, 0)
a = old.average_precision(gts, dets, scores)
b = new.average_precision(gts, dets, scores)
assert a.ap == b.ap and np.array_equal(a.precision, b.precision) and np.array_equal(a.recall, b.recall)
t = {"before": [], "after": [], "loop": []}
cpu = {"before": [], "after": [], "loop": []}
fns = {"before": old.average_precision, "after": new.average_precision, "loop": new.average_precision_loop}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 7):
    for name in ("before", "after") + (("loop",) if r < 3 else ()):
        w0, c0 = time.perf_counter(), time.process_time()
        fns[name](gts, dets, scores)
        t[name].append(time.perf_counter() - w0)
        cpu[name].append(time.process_time() - c0)
med = {k: float(np.median(v)) for k, v in t.items()}
medc = {k: float(np.median(v)) for k, v in cpu.items()}
print(json.dumps({"ap": a.ap, "wall_median_s": med, "cpu_median_s": medc,
                  "after_over_before_wall": med["after"] / med["before"],
                  "loop_over_after_wall": med["loop"] / med["after"]}, indent=1))
