"""Benchmark batch scoring of one large file: `mlopsnb score` (one process) vs `mlopsnb score --dask --workers N`.

One run, same machine, same model version (`<model>@champion` of a project built here or given), same file: rows/s of each
and the ratio dask / single. The file is the reference data resampled (with replacement) to `--rows` rows with fresh ids.
Each command runs as a subprocess, as a user would start it, and is timed around the whole process (interpreter start,
imports, model load and verification, the LocalCluster's start and stop for Dask, the MLflow record). Both outputs are
checked identical (pandas.testing.assert_frame_equal, exact) before any figure is printed; runs are interleaved
(single, dask, single, dask, ...) so machine noise hits both. See bench/README.md.

    .venv/bin/python bench/score.py [--project DIR] [--sample N] [--rows 1000000] [--format parquet|csv] [--workers 2] [--rounds 1] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import BIN, build, clean_env          # bench/serve.py's project build and clean environment


def make_file(project: Path, rows: int, fmt: str, dest: Path) -> Path:
    "The project's raw reference data (target dropped) resampled to `rows` rows, ids renumbered; written as CSV or Parquet."
    from mlopsnb.config import Project
    from mlopsnb.data import read_source
    p = Project.load(project, environ={})
    raw = read_source(p.env.data, project)
    raw = raw.drop(columns=[p.env.data.target], errors="ignore")
    df = raw.sample(rows, replace=True, random_state=0).reset_index(drop=True)
    for c in p.env.data.ids: df[c] = np.arange(len(df))
    path = dest / f"big.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    return path


def run(project: Path, args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([str(BIN / "mlopsnb"), "score", *args], cwd=project, env=clean_env(), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode: sys.exit(f"mlopsnb score {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return dt, r.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, help="a built project (default: build the reference project in a temporary folder)")
    ap.add_argument("--sample", type=int, default=2000, help="rows to build the model on when building here")
    ap.add_argument("--rows", type=int, default=1_000_000); ap.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    ap.add_argument("--workers", type=int, default=2); ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--chunk-rows", type=int, default=50_000); ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlopsnb-bench-score-") as tmp:
        tmp = Path(tmp)
        project = a.project.resolve() if a.project else build(tmp / "project", a.sample)
        src = make_file(project, a.rows, a.format, tmp)
        print(f"{a.rows} rows in {src.name} ({src.stat().st_size / 1e6:.0f} MB); {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
        times = {"single": [], "dask": []}
        common = ["--chunk-rows", str(a.chunk_rows)]
        for i in range(a.rounds):
            for variant, extra in (("single", []), ("dask", ["--dask", "--workers", str(a.workers)])):
                dt, out = run(project, [str(src), str(tmp / f"{variant}.parquet"), *common, *extra])
                times[variant].append(dt)
                print(f"  round {i + 1} {variant:6s} {dt:7.2f} s  {a.rows / dt:10,.0f} rows/s   {out.split(': ', 1)[-1]}", flush=True)
            if i == 0:      # correctness before figures
                pd.testing.assert_frame_equal(pd.read_parquet(tmp / "dask.parquet"), pd.read_parquet(tmp / "single.parquet"), check_exact=True)
                print("  outputs identical (assert_frame_equal, exact)", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        rate = {k: a.rows / v for k, v in med.items()}
        print(f"\n| variant | median s | rows/s |\n|---|---|---|")
        for k in med: print(f"| {k}{' --workers ' + str(a.workers) if k == 'dask' else ''} | {med[k]:.2f} | {rate[k]:,.0f} |")
        print(f"\nratio dask / single (rows/s): {rate['dask'] / rate['single']:.2f}")
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps({"rows": a.rows, "format": a.format, "workers": a.workers, "times": times, "median_s": med,
                                          "rows_per_s": rate, "ratio": rate["dask"] / rate["single"],
                                          "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
