"""Shared fixtures: a copy of the reference project in a temporary folder, the CLI run as a user would."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

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
    return _warm().run(argv, Path(project), clean_env(env), timeout)


class Warm:
    "The client of one warm interpreter (tests/warm.py): commands sent to it, their pids and exit codes read back."

    def __init__(self):
        self.lock, self.waiting, self.next = threading.Lock(), {}, 0
        self.tmp = Path(tempfile.mkdtemp(prefix="mlopsnb-warm-"))
        self.proc = subprocess.Popen([str(BIN / "python"), str(Path(__file__).with_name("warm.py"))], cwd=self.tmp,
                                     env=clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        assert first.startswith('{"ready"'), f"the warm interpreter did not start: {first!r}"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.lock: box = self.waiting.get(msg["id"])
            if box is None: continue              # a command given up on (timed out): nobody waits for it
            box.update(msg)
            if "code" in msg: box["done"].set()
            elif "pid" in msg: box["forked"].set()
        with self.lock:
            for box in self.waiting.values(): box["forked"].set(); box["done"].set()   # the interpreter is gone

    def run(self, argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with self.lock:
            self.next += 1
            rid, box = self.next, {"forked": threading.Event(), "done": threading.Event()}
            self.waiting[rid] = box
            out, err = self.tmp / f"{rid}.out", self.tmp / f"{rid}.err"
            self.proc.stdin.write(json.dumps({"id": rid, "argv": argv, "cwd": str(cwd), "env": env,
                                                   "out": str(out), "err": str(err)}) + "\n")
            self.proc.stdin.flush()
        try:
            if not box["done"].wait(timeout):
                box["forked"].wait(30)
                if "pid" in box: os.kill(box["pid"], signal.SIGKILL)
                box["done"].wait(30)
                raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
            assert "code" in box, "the warm interpreter ended before the command did"
            return subprocess.CompletedProcess(argv, box["code"], out.read_text(), err.read_text())
        finally:
            with self.lock: self.waiting.pop(rid, None)
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)


_WARM: list[Warm] = []
_WARM_LOCK = threading.Lock()


def _warm() -> Warm:
    "This test process's warm interpreter, started at its first use (each xdist worker has its own)."
    with _WARM_LOCK:
        if not _WARM or _WARM[0].proc.poll() is not None: _WARM[:] = [Warm()]
        return _WARM[0]


def pytest_sessionfinish(session):
    "Close the warm interpreter: it ends once the commands it forked have."
    for warm in _WARM:
        warm.proc.stdin.close()
        try: warm.proc.wait(60)
        except subprocess.TimeoutExpired: warm.proc.kill()
        shutil.rmtree(warm.tmp, ignore_errors=True)


PAUSE_CELL = ('\n# %%\nimport os, time, pathlib\nif os.environ.get("TEST_MARKER"):\n'
              '    pathlib.Path(os.environ["TEST_MARKER"]).touch(); time.sleep(120)\n')


def start_paused_build(project: Path, task: str, marker: Path, *args: str, capture: bool = False) -> subprocess.Popen:
    "Start `mlopsnb run ARGS` with a pause appended to `task`'s notebook; return once the build reached the pause."
    src = project / "notebooks" / "tasks" / f"{task}.py"
    src.write_text(src.read_text() + PAUSE_CELL)
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen([str(BIN / "mlopsnb"), "run", *args], cwd=project, env=clean_env({"TEST_MARKER": str(marker)}),
                            stdout=out, stderr=out, text=True, start_new_session=True)
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
    result = cli(project, "run", *SAMPLE, fresh=True)     # the console script from its first line, as a user starts it
    assert result.returncode == 0, result.stdout + result.stderr
    return project, result
