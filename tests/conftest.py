"""Shared fixtures: a copy of the reference project in a temporary folder, the CLI run as a user would."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import warm

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ["pipeline.yaml", "env.yaml", "notebooks/tasks", "contracts"]
SAMPLE = ["--env", "sample=600"]   # a small stratified sample: the whole pipeline in seconds
FAST = ["--engine", "inprocess", *SAMPLE]   # no kernel per task: what most tests build with
# the reference pipeline's tasks in build order: each model family of train_model's grid is a branch of train and evaluate
TASKS = ["get_data", "validate_data", "split_data", "train_model-logistic_regression", "train_model-hist_gradient_boosting",
         "evaluate_model-logistic_regression", "evaluate_model-hist_gradient_boosting", "select_model", "promote_model"]


def make_project(dest: Path, git: bool = True) -> Path:
    "Copy the reference project's spec, env, task notebooks and contracts into `dest`."
    dest.mkdir(parents=True, exist_ok=True)
    for f in PROJECT_FILES:
        src = ROOT / f
        if src.is_dir(): shutil.copytree(src, dest / f, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        else: shutil.copy(src, dest / f)
    if git:
        run = lambda *a: subprocess.run(["git", *a], cwd=dest, check=True, capture_output=True)
        run("init", "-q"); run("add", "-A")
        run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "project")
    return dest


def empty_project(dest: Path, experiment: str) -> Path:
    "A project of no task recording to `experiment`: a store for tests of the tracking layer alone."
    dest.mkdir(parents=True)
    (dest / "pipeline.yaml").write_text("tasks: []\n")
    (dest / "env.yaml").write_text(f"experiment: {experiment}\n")
    return dest


def clean_env(extra: dict | None = None) -> dict:
    "The environment of a user's shell: no MLflow run or store inherited from the test process."
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "MLOPSNB_", "PLOOMBER_")) and k != "JPY_PARENT_PID"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"   # two spin-waiting OpenMP pools on 2 cores slow a fit 100-fold (see bench/README.md)
    return {**env, **(extra or {})}


def cli(project: Path, *args: str, env: dict | None = None, timeout: float = 900, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `mlopsnb ARGS` in `project` as a user would, in a process of its own; return the finished process.

    The process is a fork of a warm interpreter (tests/warm.py: the build's libraries imported once, ~half a sample
    build's CPU) unless `fresh`, PYTHON* variables in `env` (they act at a process's start) or MLOPSNB_TEST_FRESH=1."""
    argv = [str(BIN / "mlopsnb"), *args]
    if fresh or os.environ.get("MLOPSNB_TEST_FRESH") == "1" or any(k.startswith("PYTHON") for k in env or {}):
        return subprocess.run(argv, cwd=project, capture_output=True, text=True, env=clean_env(env), timeout=timeout)
    proc = warm.client(BIN, clean_env()).start(argv, Path(project), clean_env(env))
    try: out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(60)
        raise subprocess.TimeoutExpired(argv, timeout, out, err)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def pytest_sessionfinish(session):
    warm.close()


PAUSE_CELL = ('\n# %%\nimport os, time, pathlib\nif os.environ.get("TEST_MARKER"):\n'
              '    pathlib.Path(os.environ["TEST_MARKER"]).touch(); time.sleep(120)\n')


def start_cli(project: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    "Start `mlopsnb ARGS` in `project` in a session of its own, its output captured; return the running process."
    argv = [str(BIN / "mlopsnb"), *args]
    if os.environ.get("MLOPSNB_TEST_FRESH") == "1":
        return subprocess.Popen(argv, cwd=project, env=clean_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return warm.client(BIN, clean_env()).start(argv, Path(project), clean_env(env), session=True)


def start_paused_build(project: Path, task: str, marker: Path, *args: str) -> subprocess.Popen:
    "Start `mlopsnb run ARGS` with a pause appended to `task`'s notebook; return once the build reached the pause."
    src = project / "notebooks" / "tasks" / f"{task}.py"
    src.write_text(src.read_text() + PAUSE_CELL)
    proc = start_cli(project, "run", *args, env={"TEST_MARKER": str(marker)})
    deadline = time.time() + 400
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, f"the build ended before reaching {task}"
        time.sleep(0.2)
    return proc


def set_grid(project: Path, grid: str) -> None:
    "Replace train_model's grid in pipeline.yaml (the README walkthrough does the same by hand)."
    spec = project / "pipeline.yaml"
    lines = spec.read_text().splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if l.strip() == "grid:") + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("        "))
    spec.write_text("".join(lines[:start]) + grid + "".join(lines[end:]))


def store(project: Path):
    "Return an MlflowClient on the project's local store."
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def executed(result: subprocess.CompletedProcess) -> list[str]:
    "Names of the tasks the summary reports as executed."
    return [l.split()[0] for l in result.stdout.splitlines() if l.startswith("  ") and " executed " in l]


def skipped(result: subprocess.CompletedProcess) -> list[str]:
    return [l.split()[0] for l in result.stdout.splitlines() if l.startswith("  ") and l.split()[-1:] == ["skipped"]]


def processes_in(folder: Path) -> list[int]:
    "The ids of the live processes whose working directory is `folder` (a task's kernel runs in the project's root)."
    out = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(p / "cwd")) == folder and "\nState:\tZ" not in (p / "status").read_text(): out.append(int(p.name))
        except OSError: pass
    return out


def wait_no_process_in(folder: Path, seconds: float = 20) -> None:
    deadline = time.time() + seconds
    while processes_in(folder) and time.time() < deadline: time.sleep(0.2)
    assert not processes_in(folder), f"processes left running in {folder}: {processes_in(folder)}"


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    "A copy of the project built once, on the sample, with the default engine (papermill)."
    project = make_project(tmp_path_factory.mktemp("built"))
    result = cli(project, "run", *SAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    return project, result
