"""The warm kernel pool of the papermill engine: a kernel per task still, the same records as cold kernels, no kernel left behind."""
import ast
import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import SAMPLE, TASKS, cli, executed, make_project, processes_in, start_paused_build, store, wait_no_process_in

COLD = {"MLOPSNB_WARM_KERNELS": "0"}


def recorded(project: Path) -> dict:
    "What the build recorded per task: status, params, metrics, artifact paths (two levels)."
    client = store(project)
    out = {}
    for r in client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id]):
        arts = []
        for a in client.list_artifacts(r.info.run_id):
            arts += [a.path] + ([b.path for b in client.list_artifacts(r.info.run_id, a.path)] if a.is_dir else [])
        out[r.data.tags["mlopsnb.task"]] = {"status": r.info.status, "params": r.data.params, "metrics": r.data.metrics,
                                            "artifacts": sorted(arts)}
    return out


def source(cell: dict, project: Path):
    "A cell's source without the project's folder; papermill's parameters as values (Ploomber orders `upstream` as it likes)."
    text = "".join(cell["source"]).replace(str(project), "<project>")
    if "injected-parameters" not in cell["metadata"].get("tags", []): return text
    return {l.split(" = ", 1)[0]: ast.literal_eval(l.split(" = ", 1)[1]) for l in text.splitlines() if " = " in l}


def notebook_shape(project: Path, task: str) -> list:
    "Each cell of a task's executed notebook: kind, tags, source, execution count, output types."
    name, _, branch = task.partition("-")           # a branch's notebook: products/branches/<branch>/<task>.ipynb
    nb = json.loads((project / "products" / ("branches/" + branch if branch else "") / f"{name}.ipynb").read_text())
    return [(c["cell_type"], c["metadata"].get("tags"), source(c, project), c.get("execution_count"),
             [o["output_type"] for o in c.get("outputs", [])]) for c in nb["cells"]]


@pytest.fixture(scope="module")
def warm_and_cold(built, tmp_path_factory):
    "The reference project built twice with papermill on the sample: with the warm pool (the default: the session's `built`), and with it off."
    warm, result = built
    assert executed(result) == TASKS, result.stdout
    cold = make_project(tmp_path_factory.mktemp("cold"))
    r = cli(cold, "run", *SAMPLE, env=COLD)
    assert r.returncode == 0, r.stdout + r.stderr
    assert executed(r) == TASKS, r.stdout
    wait_no_process_in(cold)
    return {"warm": warm, "cold": cold}


@pytest.mark.slow
def test_each_task_runs_in_its_own_warm_kernel_and_none_is_left(warm_and_cold):
    log = json.loads((warm_and_cold["warm"] / "products/.mlopsnb/kernels.json").read_text())
    tasks = log["tasks"]
    assert [t["task"] for t in tasks] == TASKS and all(t["warm"] for t in tasks), log
    assert all(t["forked"] for t in tasks), log           # from the fork server the build started before Ploomber loaded
    assert len({t["pid"] for t in tasks}) == len(TASKS), log                # one kernel per task, never reused
    left = processes_in(warm_and_cold["warm"])         # by working folder: a pid may have been reused since the build
    assert not [t["pid"] for t in tasks if t["pid"] in left], (left, log)
    assert not (warm_and_cold["cold"] / "products/.mlopsnb/kernels.json").exists()   # off: papermill starts the kernels


@pytest.mark.slow
def test_warm_build_records_what_a_cold_build_records(warm_and_cold):
    warm, cold = (warm_and_cold[k] for k in ("warm", "cold"))
    a, b = recorded(warm), recorded(cold)
    assert sorted(a) == sorted(b) == sorted(["(build)", *TASKS])
    for task in TASKS: assert a[task] == b[task], task       # the task's run, env and all: params, metrics, artifacts
    later = {"pipeline.png"}       # written into the shared `built` project by `mlopsnb plot` (test_messages), not by the build
    files = lambda p: sorted(str(f.relative_to(p)) for f in (p / "products").rglob("*")
                             if f.is_file() and ".mlopsnb" not in f.parts and f.name not in later)
    assert files(warm) == files(cold)
    metrics = lambda p: json.loads((p / "products/evaluation/metrics.json").read_text())["metrics"]
    assert metrics(warm) == metrics(cold)
    for task in TASKS:                                          # no warm-up cell, same counts and outputs
        assert notebook_shape(warm, task) == notebook_shape(cold, task), task


@pytest.mark.slow
def test_failed_or_killed_build_leaves_no_kernel(tmp_path):
    project = make_project(tmp_path / "p")
    src = project / "notebooks/tasks/get_data.py"
    good = src.read_text()
    src.write_text(good + "\n# %%\nraise RuntimeError('source offline')\n")
    r = cli(project, "run", *SAMPLE)
    lines = [l for l in r.stderr.splitlines() if l.startswith("mlopsnb: error:")]
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("mlopsnb: error: task 'get_data' failed in cell [") and "RuntimeError: source offline" in lines[0], r.stderr
    wait_no_process_in(project, 5)          # validate_data's kernel, started ahead, is shut down too
    src.write_text(good)
    proc = start_paused_build(project, "validate_data", tmp_path / "marker", *SAMPLE)
    assert len(processes_in(project)) >= 4          # the build, its fork server, validate_data's kernel, split_data's kernel started ahead
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_no_process_in(project)             # the kernels end with the build (their watchdog), the one ahead included
