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
With --baseline DIR (an older checkout's whole tree), every build but the plain one also runs as `<variant>-base`: the
same command with mlopsnb imported from DIR (PYTHONPATH=DIR) in a copy of DIR's own project files, interleaved with this
checkout's build (alternating which goes first), and the no-op runs in a baseline-built project too; the ratios this
checkout / baseline are printed per round and as medians.
See bench/README.md for what each variant does and the recorded figures.

    .venv/bin/python bench/pipeline.py [--sample N] [--repeat R] [--noop-repeat R] [--omp-threads N] [--json PATH] [--keep]
                                [--variants LIST] [--baseline DIR]
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


def make_project(dest: Path, root: Path = ROOT) -> Path:
    "Copy the reference project's spec, env, task notebooks and contracts (of `root`) into `dest`, as a git repository."
    dest.mkdir(parents=True)
    for f in PROJECT_FILES:
        src = root / f
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


def probe_baseline(base: Path) -> int:
    "Check that PYTHONPATH=`base` makes a process import mlopsnb from `base`; return how many tasks its own spec builds."
    code = ("import mlopsnb, sys; from mlopsnb.config import check_pipeline; "
            "print(mlopsnb.__file__); print(len(check_pipeline(sys.argv[1])))")
    p = subprocess.run([str(BIN / "python"), "-c", code, str(base)], cwd=tempfile.gettempdir(), capture_output=True,
                       text=True, env={**ENV, "PYTHONPATH": str(base)})
    lines = p.stdout.split()
    if p.returncode or not lines or not Path(lines[0]).resolve().is_relative_to(base):
        sys.exit(f"bench: --baseline {base}: mlopsnb was not imported from it:\n{p.stdout}{p.stderr[-2000:]}")
    return int(lines[1])


def imported_from(project: Path, extra: dict) -> Path:
    "The folder mlopsnb is imported from by a process started in `project` with the clean environment and `extra`."
    p = subprocess.run([str(BIN / "python"), "-c", "import mlopsnb; print(mlopsnb.__file__)"], cwd=project,
                       capture_output=True, text=True, env={**ENV, **extra}, check=True)
    return Path(p.stdout.strip()).resolve().parents[1]


def build(variant: str, tmp: Path, i: int, env_args: list[str], overrides: list[str], base: dict | None = None) -> dict:
    """Build the pipeline from scratch in a fresh project copy with one variant; return its figures.
    `base` (root, env, tasks): build the baseline's own project with its library instead."""
    if base is None: project = make_project(tmp / f"{i}-{variant}")
    else:
        project = make_project(tmp / f"{i}-{variant}-base", base["root"])
        if imported_from(project, base["env"]) != base["root"]: sys.exit(f"bench: {variant}-base would not run the baseline")
    if variant == "plain":
        cmd = [str(BIN / "python"), str(plain_script(project, overrides, tmp / f"{i}-plain_pipeline.py"))]
    elif variant == "parallel":
        cmd = [str(BIN / "mlopsnb"), "run", "--engine", "inprocess", "--jobs", "2", *env_args]
    elif variant == "papermill-jobs2":    # --jobs 2 with the default engine: each task's kernel forked from the build's fork server
        cmd = [str(BIN / "mlopsnb"), "run", "--jobs", "2", *env_args]
    else:
        cmd = [str(BIN / "mlopsnb"), "run", "--engine", variant.split("-")[0], *env_args]
    assert not (project / "mlflow.db").exists() and not (project / "products").exists()
    seconds, p = timed(cmd, project, {**VARIANT_ENV.get(variant, {}), **(base["env"] if base else {})})
    if variant != "plain" and f"{base['tasks'] if base else task_count()} executed" not in p.stdout:
        sys.exit(f"bench: {variant} build did not execute every task:\n{p.stdout}")
    metrics = project / "products" / "evaluation" / "metrics.json"
    decision = project / "products" / "promotion" / "decision.json"
    if not (metrics.exists() and decision.exists()): sys.exit(f"bench: {variant} build left no final products in {project}")
    fit = 0.0
    for grid in (project / "products" / "branches").glob("*/model/candidates.csv"):   # every branch's candidates
        with open(grid, newline="") as f: fit += sum(float(r["fit_seconds"]) for r in csv.DictReader(f))
    return {"seconds": seconds, "project": project, "tasks": task_seconds(p.stdout), "fit_seconds": fit,
            "metrics": json.loads(metrics.read_text())["metrics"]}


def noop_pair(project: Path, other: Path | None, repeat: int, env_args: list[str], ploomber_args: list[str],
              base: tuple[Path, dict] | None = None) -> dict[str, list[float]]:
    """Time `mlopsnb run` in `project` and `ploomber build` in `other` (built by Ploomber) alternately; check that neither
    executes anything. `base` (a baseline-built project, its environment): `mlopsnb run` there too, between the two;
    `other` None: no Ploomber reference."""
    before = snapshot(project / "products")
    before_other = snapshot(other / "products") if other else {}
    before_base = snapshot(base[0] / "products") if base else {}
    times = {"no-op mlopsnb": [], **({"no-op mlopsnb-base": []} if base else {}), **({"no-op ploomber": []} if other else {})}
    for _ in range(repeat):
        s, p = timed([str(BIN / "mlopsnb"), "run", *env_args], project)
        if not p.stdout.startswith("nothing to do"): sys.exit(f"bench: `mlopsnb run` was not a no-op:\n{p.stdout}")
        times["no-op mlopsnb"].append(s)
        if base:
            s, p = timed([str(BIN / "mlopsnb"), "run", *env_args], base[0], base[1])
            if not p.stdout.startswith("nothing to do"): sys.exit(f"bench: the baseline's `mlopsnb run` was not a no-op:\n{p.stdout}")
            times["no-op mlopsnb-base"].append(s)
            if snapshot(base[0] / "products") != before_base: sys.exit("bench: the baseline's no-op changed a product")
        if other is None:
            if snapshot(project / "products") != before: sys.exit("bench: a no-op changed a product")
            continue
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
    p.add_argument("--baseline", help="also run every build but plain, and the no-op, with mlopsnb imported from this "
                   "folder (an older checkout's whole tree: its project files are used too), interleaved; report this / baseline")
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
    base = None
    if a.baseline:
        root = Path(a.baseline).resolve()
        lacking = [f for f in PROJECT_FILES if not (root / f).exists()]
        if lacking: p.error(f"--baseline: {root} has no {lacking[0]}: give the baseline's whole tree (git worktree add DIR COMMIT)")
        base = {"root": root, "env": {"PYTHONPATH": str(root)}, "tasks": probe_baseline(root)}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so that the temporary projects are removed
    overrides = [f"sample={a.sample}"] if a.sample else []
    env_args = [x for o in overrides for x in ("--env", o)]
    ploomber_args = ["--env--sample", str(a.sample)] if a.sample else []
    info = {**machine(), "sample": a.sample, "repeat": a.repeat, "noop_repeat": a.noop_repeat,
            "omp_threads": a.omp_threads or "unset"}
    print(f"bench/pipeline.py  {info['date']}  commit {info['commit']}  {info['cpus']} cpus  python {info['python']}  "
          f"sample {a.sample or 'all rows'}  OMP_NUM_THREADS {info['omp_threads']}  load {info['load_before']}", flush=True)
    if base:
        info["baseline"] = str(base["root"])
        print(f"  baseline: mlopsnb imported from {base['root']} (checked), its own project files, {base['tasks']} tasks", flush=True)
    if info["load_before"] > 0.5 * (info["cpus"] or 1):
        print("  warning: the machine is busy: use --repeat 3 (and keep --omp-threads 1)", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="mlopsnb-bench-"))
    try:
        runs: dict[str, list[dict]] = {v: [] for v in builds}
        if base: runs |= {f"{v}-base": [] for v in builds if v != "plain"}
        for i in range(a.repeat):
            for v in builds:                     # interleaved: drift on a shared machine hits every variant alike
                pair = [(v, None), (f"{v}-base", base)] if base and v != "plain" else [(v, None)]
                for name, b in (pair if i % 2 == 0 else pair[::-1]):   # the baseline goes first every other round
                    r = build(v, tmp, i, env_args, overrides, b)
                    runs[name].append(r)
                    print(f"  build {name:<14} run {i + 1}/{a.repeat}: {r['seconds']:6.1f}s  (fit_grid {r['fit_seconds']:.1f}s)  "
                          f"{r['tasks'] or ''}", flush=True)
        ref = runs["plain"][-1]["metrics"] if "plain" in runs else None
        for v in runs:
            if ref is not None and any(r["metrics"] != ref for r in runs[v]): print(f"  warning: {v} build's test metrics differ from the plain build's")
        noop = {}
        if "papermill" in runs and a.noop_repeat:
            other = make_project(tmp / "ploomber-built")     # plain Ploomber's view of the spec (no branches), built once by Ploomber
            timed([str(BIN / "ploomber"), "build", *ploomber_args], other)
            noop = noop_pair(runs["papermill"][-1]["project"], other, a.noop_repeat, env_args, ploomber_args,
                             (runs["papermill-base"][-1]["project"], base["env"]) if base else None)
        elif base and "inprocess" in runs and a.noop_repeat:   # no Ploomber-built reference: this checkout against the baseline
            noop = noop_pair(runs["inprocess"][-1]["project"], None, a.noop_repeat, env_args, ploomber_args,
                             (runs["inprocess-base"][-1]["project"], base["env"]))
        if noop:
            print("  no-op pair: " + "  ".join(f"{k[6:]} {['%.2f' % s for s in t]}" for k, t in noop.items()), flush=True)
    finally:
        if a.keep: print(f"  projects kept in {tmp}")
        else: shutil.rmtree(tmp, ignore_errors=True)

    info["load_after"] = round(os.getloadavg()[0], 2)
    times = {f"build {v}": [r["seconds"] for r in runs[v]] for v in runs} | noop
    med = {k: statistics.median(v) for k, v in times.items()}
    refs = {"build papermill": "build plain", "build papermill-nofork": "build plain", "build papermill-cold": "build plain", "build inprocess": "build plain", "build plain": "build plain",
            "build parallel": "build inprocess", "build papermill-jobs2": "build papermill",
            "no-op mlopsnb": "no-op ploomber", "no-op ploomber": "no-op ploomber"}
    refs |= {f"{k}-base": r for k, r in refs.items() if k != "build plain"}
    rows = []
    for k in times:
        ratio = med[k] / med[refs[k]] if refs[k] in med else float("nan")
        target = TARGETS.get(k)
        rows.append({"variant": k, "seconds": round(med[k], 3), "runs": [round(s, 3) for s in times[k]],
                     "reference": refs[k], "ratio": round(ratio, 3), "target": target,
                     "pass": None if target is None or ratio != ratio else ratio <= target})
    print(f"\n{'variant':<21} {'seconds':>8}  {'ratio':>6}  {'vs':<15} {'target':>7}  result")
    for r in rows:
        tgt = f"<= {r['target']}" if r["target"] else "-"
        res = "-" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
        print(f"{r['variant']:<21} {r['seconds']:>8.2f}  {r['ratio']:>6.2f}  {r['reference']:<15} {tgt:>7}  {res}")
    vs_base = []
    for k in (k for k in times if f"{k}-base" in times):   # this checkout / baseline: medians, and each interleaved round
        vs_base.append({"variant": k, "ratio": round(med[k] / med[f"{k}-base"], 3), "seconds": round(med[k], 3),
                        "base_seconds": round(med[f"{k}-base"], 3),
                        "per_round": [round(t / b, 3) for t, b in zip(times[k], times[f"{k}-base"])]})
        vs_base[-1]["round_geomean"] = round(statistics.geometric_mean(vs_base[-1]["per_round"]), 3)   # pairs run back to back
    if vs_base:
        print(f"\n{'this / baseline':<21} {'this s':>8}  {'base s':>8}  {'ratio':>6}  {'rounds':>6}  per round "
              "(ratio: of the medians; rounds: geometric mean of the per-round ratios)")
        for r in vs_base:
            print(f"{r['variant']:<21} {r['seconds']:>8.2f}  {r['base_seconds']:>8.2f}  {r['ratio']:>6.2f}  {r['round_geomean']:>6.2f}  "
                  f"{', '.join('%.2f' % x for x in r['per_round'])}")
    tasks = {v: {t: statistics.median(r["tasks"][t] for r in runs[v]) for t in runs[v][0]["tasks"]}
             for v in runs if runs[v][0]["tasks"]}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        fits = {v: [round(r["fit_seconds"], 3) for r in runs[v]] for v in runs}
        Path(a.json).write_text(json.dumps({**info, "results": rows, "task_seconds": tasks, "fit_grid_seconds": fits,
                                            **({"vs_baseline": vs_base} if vs_base else {})},
                                           indent=1) + "\n")
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
