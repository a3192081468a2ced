"""Benchmark the reference pipeline side by side: papermill, in-process and plain Python builds; no-op checks.

Every variant, in one run, each as the subprocess a user would start, in a clean environment:

  build papermill   `mlopsnb run --engine papermill` in a fresh copy of the project (warm kernel pool, kernels forked
                    from the fork server: the default)
  build papermill-nofork  the same with the fork server off (MLOPSNB_FORK_KERNELS=0): the pool starts new kernel processes
  build papermill-cold  the same with the pool off (MLOPSNB_WARM_KERNELS=0): papermill starts each kernel itself
  build inprocess   `mlopsnb run --engine inprocess` in a fresh copy of the project
  build plain       the same task code as ONE plain script, `python plain_pipeline.py`, in a fresh copy
  no-op mlopsnb     `mlopsnb run` in a project already built (prints "nothing to do")
  no-op ploomber    `ploomber build` of the same spec in a copy built by `ploomber build` (skips every task;
                    plain Ploomber sees no branches, so it needs its own built copy)
  build parallel    `mlopsnb run --engine inprocess --jobs 2`: the two model-family branches side by side
  build papermill-jobs2  `mlopsnb run --jobs 2` (papermill): each task process's kernel forked from the build's fork server

Results are ratios, measured in the same run (the machine is shared and noisy):
in-process build / plain build (target <= 1.5), no-op mlopsnb / no-op ploomber (target <= 0.4), and
parallel / in-process build (no target: it depends on the free cores), papermill --jobs 2 / serial papermill
(target <= 1.0: a parallel build is not slower than a serial one, even on 2 cores).
See bench/README.md for what each variant does and the recorded figures.

    .venv/bin/python bench/pipeline.py [--sample N] [--repeat R] [--noop-repeat R] [--omp-threads N] [--json PATH] [--keep]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ["pipeline.yaml", "env.yaml", "notebooks/tasks", "contracts"]
BUILDS = ["papermill", "papermill-nofork", "papermill-cold", "inprocess", "plain", "parallel", "papermill-jobs2"]
VARIANT_ENV = {"papermill-cold": {"MLOPSNB_WARM_KERNELS": "0"}, "papermill-nofork": {"MLOPSNB_FORK_KERNELS": "0"}}
TARGETS = {"build papermill": 2.0, "build inprocess": 1.5, "no-op mlopsnb": 0.4, "build papermill-jobs2": 1.0}   # ratio to the variant's reference, at most


def clean_env() -> dict:
    "The environment of a user's shell: nothing of MLflow, mlopsnb or Ploomber inherited; telemetry and version checks off."
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "MLOPSNB_", "PLOOMBER_")) and k not in {"JPY_PARENT_PID", "VIRTUAL_ENV"}}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PLOOMBER_STATS_ENABLED"] = "false"          # no network: telemetry off for every variant alike
    env["PLOOMBER_VERSION_CHECK_DISABLED"] = "true"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"         # MLflow 3 fetches a config and posts usage events otherwise
    return env


ENV = clean_env()   # taken before anything in this process imports mlopsnb or ploomber


def make_project(dest: Path) -> Path:
    "Copy the reference project's spec, env, task notebooks and contracts into `dest`, as a git repository."
    dest.mkdir(parents=True)
    for f in PROJECT_FILES:
        src = ROOT / f
        if src.is_dir(): shutil.copytree(src, dest / f, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        else: shutil.copy(src, dest / f)
    git = lambda *a: subprocess.run(["git", *a], cwd=dest, check=True, capture_output=True)
    git("init", "-q"); git("add", "-A")
    git("-c", "user.email=bench@mlopsnb", "-c", "user.name=bench", "commit", "-qm", "project")
    return dest


def timed(cmd: list[str], cwd: Path, extra: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    "Run `cmd` in `cwd` with the clean environment (and `extra`); return its wall time and the finished process."
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env={**ENV, **(extra or {})}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed in {cwd} (exit {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    return seconds, p


def plain_script(project: Path, overrides: list[str], dest: Path) -> Path:
    "Write the task notebooks, in pipeline order, with the parameters Ploomber injects, as one Python script."
    from mlopsnb.config import Project
    from mlopsnb.build import load_dag
    dag = load_dag(Project.load(project, overrides))
    dag.render(show_progress=False, force=True)
    dirs = sorted({str(Path(str(p)).parent) for name in dag for p in dag[name].product})
    out = ["# Generated by bench/pipeline.py: the pipeline's task notebooks as one plain script.",
           "import os",
           "os.environ['MLOPSNB_INTERACTIVE_REGISTRY'] = 'write'   # register and promote like the pipeline does",
           f"for d in {dirs!r}: os.makedirs(d, exist_ok=True)   # what Ploomber does before a task runs"]
    for name in dag:
        nb = json.loads(dag[name].source.nb_str_rendered)
        out.append(f"\n# {'=' * 20} {name} {'=' * 20}")
        out.append("import mlopsnb.tracking; mlopsnb.tracking._state['interactive'] = None   # one MLflow run per task "
                   "(the two branches' train_model log the same param names)")
        for cell in nb["cells"]:
            if cell["cell_type"] != "code": continue
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            out.append("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))))
    dest.write_text("\n".join(out) + "\n", encoding="utf-8")
    return dest


def task_seconds(stdout: str) -> dict[str, float]:
    "Per-task seconds from `mlopsnb run`'s summary."
    out = {}
    for l in stdout.splitlines():
        parts = l.split()
        if l.startswith("  ") and len(parts) == 3 and parts[1] == "executed": out[parts[0]] = float(parts[2].rstrip("s"))
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    "Size and mtime of every product file under `folder` (not mlopsnb's own state: the build lock is rewritten by every run)."
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and ".mlopsnb" not in p.relative_to(folder).parts}


def task_count(ploomber: bool = False) -> int:
    "How many tasks mlopsnb builds from the reference spec (branches expanded), or plain Ploomber does (no branches)."
    import yaml
    from mlopsnb.config import check_pipeline
    return len(yaml.safe_load((ROOT / "pipeline.yaml").read_text())["tasks"]) if ploomber else len(check_pipeline(ROOT))


def build(variant: str, tmp: Path, i: int, env_args: list[str], overrides: list[str]) -> dict:
    "Build the pipeline from scratch in a fresh project copy with one variant; return its figures."
    project = make_project(tmp / f"{i}-{variant}")
    if variant == "plain":
        cmd = [str(BIN / "python"), str(plain_script(project, overrides, tmp / f"{i}-plain_pipeline.py"))]
    elif variant == "parallel":
        cmd = [str(BIN / "mlopsnb"), "run", "--engine", "inprocess", "--jobs", "2", *env_args]
    elif variant == "papermill-jobs2":    # --jobs 2 with the default engine: each task's kernel forked from the build's fork server
        cmd = [str(BIN / "mlopsnb"), "run", "--jobs", "2", *env_args]
    else:
        cmd = [str(BIN / "mlopsnb"), "run", "--engine", variant.split("-")[0], *env_args]
    assert not (project / "mlflow.db").exists() and not (project / "products").exists()
    seconds, p = timed(cmd, project, VARIANT_ENV.get(variant))
    if variant != "plain" and f"{task_count()} executed" not in p.stdout:
        sys.exit(f"bench: {variant} build did not execute every task:\n{p.stdout}")
    metrics = project / "products" / "evaluation" / "metrics.json"
    decision = project / "products" / "promotion" / "decision.json"
    if not (metrics.exists() and decision.exists()): sys.exit(f"bench: {variant} build left no final products in {project}")
    fit = 0.0
    for grid in (project / "products" / "branches").glob("*/model/candidates.csv"):   # every branch's candidates
        with open(grid, newline="") as f: fit += sum(float(r["fit_seconds"]) for r in csv.DictReader(f))
    return {"seconds": seconds, "project": project, "tasks": task_seconds(p.stdout), "fit_seconds": fit,
            "metrics": json.loads(metrics.read_text())["metrics"]}


def noop_pair(project: Path, other: Path, repeat: int, env_args: list[str], ploomber_args: list[str]) -> dict[str, list[float]]:
    "Time `mlopsnb run` in `project` and `ploomber build` in `other` (built by Ploomber) alternately; check that neither executes anything."
    before, before_other = snapshot(project / "products"), snapshot(other / "products")
    times = {"no-op mlopsnb": [], "no-op ploomber": []}
    for _ in range(repeat):
        s, p = timed([str(BIN / "mlopsnb"), "run", *env_args], project)
        if not p.stdout.startswith("nothing to do"): sys.exit(f"bench: `mlopsnb run` was not a no-op:\n{p.stdout}")
        times["no-op mlopsnb"].append(s)
        s, p = timed([str(BIN / "ploomber"), "build", *ploomber_args], other)
        rows = [l.split() for l in p.stdout.splitlines() if l.split()[1:2] in (["True"], ["False"])]
        if len(rows) != task_count(ploomber=True) or any(r[1] != "False" for r in rows):
            sys.exit(f"bench: `ploomber build` was not a no-op:\n{p.stdout}")
        times["no-op ploomber"].append(s)
        if snapshot(project / "products") != before or snapshot(other / "products") != before_other:
            sys.exit("bench: a no-op changed a product")
    return times


def machine() -> dict:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": head or "none",
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_before": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sample", type=int, help="rows to sample (env sample=N); default: all rows")
    p.add_argument("--repeat", type=int, default=1, help="builds per variant, interleaved; the median counts (default 1)")
    p.add_argument("--noop-repeat", type=int, default=5, help="no-op runs per command, interleaved; the median counts (default 5)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--omp-threads", type=int, default=1, help="OMP_NUM_THREADS for every variant alike (default 1: "
                   "model fitting with OpenMP swings wildly on a busy 2-core machine; 0 leaves it unset)")
    p.add_argument("--keep", action="store_true", help="keep the temporary projects")
    p.add_argument("--variants", default=",".join(BUILDS), help=f"the builds to run, comma-separated (default: all, {','.join(BUILDS)}); "
                   "a ratio needs its reference built too; the no-op pair runs when papermill is built")
    a = p.parse_args(argv)
    builds = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in builds if v not in BUILDS]
    if unknown: p.error(f"--variants: unknown build {unknown[0]!r}: choose from {', '.join(BUILDS)}")
    needs = {"papermill": "plain", "papermill-nofork": "plain", "papermill-cold": "plain", "inprocess": "plain", "parallel": "inprocess",
             "papermill-jobs2": "papermill"}
    missing = [f"{v} needs {needs[v]}" for v in builds if v in needs and needs[v] not in builds]
    if missing: p.error(f"--variants: {missing[0]} (its reference)")
    if a.omp_threads: ENV["OMP_NUM_THREADS"] = str(a.omp_threads)
    else: ENV.pop("OMP_NUM_THREADS", None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so that the temporary projects are removed
    overrides = [f"sample={a.sample}"] if a.sample else []
    env_args = [x for o in overrides for x in ("--env", o)]
    ploomber_args = ["--env--sample", str(a.sample)] if a.sample else []
    info = {**machine(), "sample": a.sample, "repeat": a.repeat, "noop_repeat": a.noop_repeat,
            "omp_threads": a.omp_threads or "unset"}
    print(f"bench/pipeline.py  {info['date']}  commit {info['commit']}  {info['cpus']} cpus  python {info['python']}  "
          f"sample {a.sample or 'all rows'}  OMP_NUM_THREADS {info['omp_threads']}  load {info['load_before']}", flush=True)
    if info["load_before"] > 0.5 * (info["cpus"] or 1):
        print("  warning: the machine is busy: use --repeat 3 (and keep --omp-threads 1)", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="mlopsnb-bench-"))
    try:
        runs: dict[str, list[dict]] = {v: [] for v in builds}
        for i in range(a.repeat):
            for v in builds:                     # interleaved: drift on a shared machine hits every variant alike
                r = build(v, tmp, i, env_args, overrides)
                runs[v].append(r)
                print(f"  build {v:<14} run {i + 1}/{a.repeat}: {r['seconds']:6.1f}s  (fit_grid {r['fit_seconds']:.1f}s)  "
                      f"{r['tasks'] or ''}", flush=True)
        ref = runs["plain"][-1]["metrics"] if "plain" in runs else None
        for v in builds:
            if ref is not None and any(r["metrics"] != ref for r in runs[v]): print(f"  warning: {v} build's test metrics differ from the plain build's")
        noop = {}
        if "papermill" in runs and a.noop_repeat:
            other = make_project(tmp / "ploomber-built")     # plain Ploomber's view of the spec (no branches), built once by Ploomber
            timed([str(BIN / "ploomber"), "build", *ploomber_args], other)
            noop = noop_pair(runs["papermill"][-1]["project"], other, a.noop_repeat, env_args, ploomber_args)
            print(f"  no-op pair: mlopsnb {['%.2f' % s for s in noop['no-op mlopsnb']]}  "
                  f"ploomber {['%.2f' % s for s in noop['no-op ploomber']]}", flush=True)
    finally:
        if a.keep: print(f"  projects kept in {tmp}")
        else: shutil.rmtree(tmp, ignore_errors=True)

    info["load_after"] = round(os.getloadavg()[0], 2)
    times = {f"build {v}": [r["seconds"] for r in runs[v]] for v in builds} | noop
    med = {k: statistics.median(v) for k, v in times.items()}
    refs = {"build papermill": "build plain", "build papermill-nofork": "build plain", "build papermill-cold": "build plain", "build inprocess": "build plain", "build plain": "build plain",
            "build parallel": "build inprocess", "build papermill-jobs2": "build papermill",
            "no-op mlopsnb": "no-op ploomber", "no-op ploomber": "no-op ploomber"}
    rows = []
    for k in times:
        ratio = med[k] / med[refs[k]]
        target = TARGETS.get(k)
        rows.append({"variant": k, "seconds": round(med[k], 3), "runs": [round(s, 3) for s in times[k]],
                     "reference": refs[k], "ratio": round(ratio, 3), "target": target,
                     "pass": None if target is None else ratio <= target})
    print(f"\n{'variant':<21} {'seconds':>8}  {'ratio':>6}  {'vs':<15} {'target':>7}  result")
    for r in rows:
        tgt = f"<= {r['target']}" if r["target"] else "-"
        res = "-" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
        print(f"{r['variant']:<21} {r['seconds']:>8.2f}  {r['ratio']:>6.2f}  {r['reference']:<15} {tgt:>7}  {res}")
    tasks = {v: {t: statistics.median(r["tasks"][t] for r in runs[v]) for t in runs[v][0]["tasks"]}
             for v in builds if runs[v][0]["tasks"]}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        fits = {v: [round(r["fit_seconds"], 3) for r in runs[v]] for v in builds}
        Path(a.json).write_text(json.dumps({**info, "results": rows, "task_seconds": tasks, "fit_grid_seconds": fits},
                                           indent=1) + "\n")
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
