"""E4M3 encoding speed: quantize.py's ml_dtypes encoder vs the hand-written one that tests/test_quantize.py keeps as
its oracle. 4M float32 values per call (the quantiser's chunk), the two interleaved, median of 21.

    python benchmarks/e4m3_speed.py
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_quantize import _hand_written_e4m3_codes  # noqa: E402

from gr00t_export.pipeline.quantize import _e4m3_codes  # noqa: E402

rng = np.random.default_rng(0)
CASES = {"N(0, 50)": (rng.standard_normal(1 << 22) * 50).astype(np.float32),
         "weights / per-tensor scale": (rng.standard_normal(1 << 22) * 0.02 / (0.1 / 448)).astype(np.float32),
         "bit-pattern sweep": np.arange(0, 2**32, 1024, dtype=np.uint64).astype(np.uint32).view(np.float32)}
for label, x in CASES.items():
    times: dict[str, list[float]] = {f.__name__: [] for f in (_hand_written_e4m3_codes, _e4m3_codes)}
    for _ in range(21):
        for f in (_hand_written_e4m3_codes, _e4m3_codes):
            start = time.perf_counter()
            f(x)
            times[f.__name__].append(time.perf_counter() - start)
    old, new = (float(np.median(v)) * 1e3 for v in times.values())
    print(f"{label:28} hand-written {old:6.1f} ms  ml_dtypes {new:6.1f} ms  speedup {old / new:.2f}x")
