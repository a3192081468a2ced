"""Drift check: mlopsnb (reference reduced to its profile, current streamed in chunks) vs Evidently 0.7's DataDriftPreset.

    .venv/bin/python bench/drift.py [--rows 100000 1000000] [--big 1000000 3000000 10000000] [--evidently-python PATH]

Evidently 0.7 does not import with pandas 3: it runs from its own virtualenv with `pandas<3`
(`python -m venv /tmp/evenv && /tmp/evenv/bin/pip install "evidently>=0.7,<0.8" "pandas<3"`), never a
project dependency. Each measurement runs in a fresh process that reads the same Parquet files and
reports its wall time and peak RSS (VmHWM of /proc/self/status: the process's own high-water mark; ru_maxrss is
not used, because Linux carries it over from the parent that started the process, here the bench after writing the
files); the two tools alternate per size, in one run.
Synthetic data, 30 columns (20 numeric, 10 categorical), current = reference with 3 columns shifted;
both tools must flag the shifted columns (checked before the figures are printed).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
NUM, CAT = 20, 10
SHIFTED = ["n0", "n1", "c0"]


def chunk(n: int, seed: int, drift: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {f"n{i}": rng.normal(10 * i, 1 + i % 3, n) for i in range(NUM)}
    for i in range(CAT):
        k = 3 + i % 5
        p = np.arange(1, k + 1, dtype=float); p /= p.sum()
        if drift and i == 0: p = p[::-1]
        cols[f"c{i}"] = np.array([f"v{j}" for j in range(k)])[rng.choice(k, n, p=p)]
    df = pd.DataFrame(cols)
    if drift: df["n0"] += 0.5; df["n1"] *= 1.2
    return df


def write(path: Path, rows: int, seed: int, drift: bool, per: int = 500_000) -> None:
    writer = None
    for i, start in enumerate(range(0, rows, per)):
        t = pa.Table.from_pandas(chunk(min(per, rows - start), seed * 1000 + i, drift), preserve_index=False)
        writer = writer or pq.ParquetWriter(path, t.schema)
        writer.write_table(t)
    writer.close()


PEAK = """
def PEAK():   # this process's own peak resident memory, MB (ru_maxrss would include the parent's, see the docstring)
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
"""

MLOPSNB = PEAK + """
import json, sys, time
t0 = time.perf_counter()
from mlopsnb.config import MonitorConfig
from mlopsnb.monitor import DriftAccumulator, drift_results, read_chunks, reference_profile
prof = reference_profile(sys.argv[1])        # a Parquet file: read and profiled one column at a time
t1 = time.perf_counter()
cfg = MonitorConfig()
acc = DriftAccumulator(prof)
for df in read_chunks(sys.argv[2], cfg.chunk_rows, list(prof["columns"])): acc.update(df)   # what `mlopsnb monitor --current` reads
res = drift_results(acc, cfg)["features"]
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t0, "profile_s": t1 - t0, "check_s": t2 - t1, "peak_mb": PEAK(),
                  "drifted": sorted(c for c, r in res.items() if r["status"] == "drift")}))
"""

EVIDENTLY = PEAK + """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
snap = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
d = snap.dict()
t1 = time.perf_counter()
drifted = []
for m in d["metrics"]:
    if m["metric_name"].startswith("ValueDrift("):
        col = m["metric_name"].split("column=")[1].split(",")[0]
        thr = m["config"]["threshold"]; v = float(m["value"])
        if ("p_value" in m["metric_name"] and v < thr) or ("p_value" not in m["metric_name"] and v >= thr): drifted.append(col)
print(json.dumps({"seconds": t1 - t0, "peak_mb": PEAK(), "drifted": sorted(drifted)}))
"""


def measure(python: str, code: str, ref: Path, cur: Path, env: dict | None = None) -> dict:
    out = subprocess.run([python, "-c", code, str(ref), str(cur)], capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode: raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--big", type=int, nargs="*", default=[10_000_000],
                    help="current rows of the bounded-memory runs against a 1M-row reference (mlopsnb only; 0 skips), e.g. --big 1000000 3000000 10000000")
    ap.add_argument("--evidently-python", default="/tmp/evenv/bin/python")
    a = ap.parse_args()
    import os
    sys.path.insert(0, str(ROOT))
    from mlopsnb.config import MonitorConfig
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        print(f"{'rows':>10}  {'tool':<10} {'seconds':>9} {'peak MB':>9}  drifted columns")
        for n in a.rows:
            ref, cur = d / f"ref{n}.parquet", d / f"cur{n}.parquet"
            write(ref, n, 1, False); write(cur, n, 2, True)
            m = measure(sys.executable, MLOPSNB, ref, cur, env)
            e = measure(a.evidently_python, EVIDENTLY, ref, cur)
            for tool, r in (("mlopsnb", m), ("evidently", e)):
                assert set(SHIFTED) <= set(r["drifted"]), (tool, r["drifted"])
                extra = f" (profile {r['profile_s']:.1f}s + check {r['check_s']:.1f}s)" if "check_s" in r else ""
                print(f"{n:>10}  {tool:<10} {r['seconds']:>9.1f} {r['peak_mb']:>9.0f}  {','.join(r['drifted'])}{extra}")
            print(f"{n:>10}  ratio: Evidently/mlopsnb time {e['seconds'] / m['seconds']:.1f}x, peak memory {e['peak_mb'] / m['peak_mb']:.1f}x", flush=True)
        big = [n for n in a.big if n]
        if big:
            ref = d / "ref_big.parquet"
            write(ref, 1_000_000, 3, False)
            for n in big:                                   # bounded memory: the peak should stay flat as the current rows grow
                cur = d / f"cur_big{n}.parquet"
                write(cur, n, 4, True)
                m = measure(sys.executable, MLOPSNB, ref, cur, env)
                cur.unlink()
                print(f"{n:>10}  mlopsnb    {m['seconds']:>9.1f} {m['peak_mb']:>9.0f}  {','.join(m['drifted'])} "
                      f"(reference 1M rows; current read {MonitorConfig().chunk_rows:,} rows at a time)", flush=True)

if __name__ == "__main__":
    main()
