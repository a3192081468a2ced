"""`mlopsnb export airflow`: the DAG file, its validation, `mlopsnb task` retry safety, and a real Airflow 3 DAG run
recorded in MLflow like `mlopsnb run` (Airflow in its own virtualenv, `make airflow`)."""
import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, TASKS, clean_env, cli, make_project, store

AIRFLOW_SETTINGS = ("  airflow:                                          # `mlopsnb export airflow`\n"
                    "    validate_data: {retries: 2, retry_delay: 1, retry_exponential_backoff: true, max_retry_delay: 600, execution_timeout: 3600}\n")
FAIL_ONCE = ('\n# %%\nimport pathlib\nmarker = pathlib.Path({marker!r})\nif not marker.exists():\n    marker.touch()\n'
             '    pathlib.Path(product["report"]).write_text(\'{{"partial": \')   # a half-written product\n'
             '    raise RuntimeError("transient failure on the first attempt")\n')

# the reference pipeline's tasks as mlopsnb builds them: train_model and evaluate_model once per model family

def with_airflow_settings(project: Path, settings: str = AIRFLOW_SETTINGS) -> Path:
    "Add an `airflow` section to the executor of the project's pipeline.yaml."
    spec = project / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("\ntasks:\n", f"{settings}\ntasks:\n", 1))
    return project


def fail_once(project: Path, marker: Path, task: str = "validate_data") -> None:
    "Make `task` write a partial product and fail on its first attempt (while `marker` is absent); commit the change."
    src = project / "notebooks" / "tasks" / f"{task}.py"
    src.write_text(src.read_text() + FAIL_ONCE.format(marker=str(marker)))
    run = lambda *a: subprocess.run(["git", *a], cwd=project, check=True, capture_output=True)
    run("add", "-A"); run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "fail once")


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_export_rejects_a_bad_airflow_setting(tmp_path):
    # every key and type is checked in notebooks/api/01_config.ipynb (airflow_settings); here: one line, exit code 2
    project = with_airflow_settings(make_project(tmp_path, git=False), "  airflow: {validate_data: {retires: 2}}\n")
    result = cli(project, "export", "airflow")
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_line(result) == "mlopsnb: error: pipeline.yaml: executor: airflow: task 'validate_data': retires: unknown key"
    assert not (project / "dags").exists()


def test_export_writes_every_task_and_dependency(tmp_path):
    from mlopsnb.build import graph
    project = with_airflow_settings(make_project(tmp_path, git=False))
    result = cli(project, "export", "airflow", "--out", str(tmp_path / "out"), "--dag-id", "churn_daily", "--schedule", "@daily",
                 "--engine", "inprocess", *SAMPLE)
    assert result.returncode == 0, result.stderr
    src = (tmp_path / "out" / "churn_daily.py").read_text()
    compile(src, "churn_daily.py", "exec")
    assert "from airflow.sdk import DAG" in src and "from airflow.providers.standard.operators.bash import BashOperator" in src
    assert "dag_id='churn_daily', schedule='@daily'" in src and "catchup=False" in src
    assert f"PROJECT = {str(project)!r}" in src and "ARGS = '--engine inprocess --pipeline pipeline.yaml --env sample=600'" in src
    tasks = re.findall(r"tasks\['([^']+)'\] = mlopsnb_task", src)
    assert sorted(tasks) == sorted(TASKS) and tasks[:3] == TASKS[:3] and tasks[-2:] == TASKS[-2:]   # the branches' tasks included
    assert set(re.findall(r"tasks\['([^']+)'\] >> tasks\['([^']+)'\]", src)) == set(graph(project).edges)
    assert ("tasks['validate_data'] = mlopsnb_task('validate_data', 'validate_data', retries=2, retry_delay=dt.timedelta(seconds=1.0), "
            "retry_exponential_backoff=2.0, max_retry_delay=dt.timedelta(seconds=600.0), execution_timeout=dt.timedelta(seconds=3600.0))") in src
    assert "tasks['get_data'] = mlopsnb_task('get_data', 'get_data', retries=1, retry_delay=dt.timedelta(seconds=30.0))" in src
    assert "finish = mlopsnb_task('mlopsnb_finish', '--finish', trigger_rule='all_done'" in src


@pytest.mark.slow
def test_task_retry_never_takes_a_partial_product_as_finished(tmp_path):
    from ploomber.spec import DAGSpec
    project = with_airflow_settings(make_project(tmp_path / "p"))
    fail_once(project, tmp_path / "failed-once")
    # the airflow section does not break a plain `ploomber build` of the same spec: Ploomber builds its DAG and executor
    dag = DAGSpec(str(project / "pipeline.yaml")).to_dag()
    assert type(dag.executor).__name__ == "RecordingExecutor" and dag.executor.airflow["validate_data"]["retries"] == 2
    task = lambda name, attempt: cli(project, "task", name, "--dag-run-id", "manual__1", "--attempt", str(attempt), "--engine", "inprocess", *SAMPLE)
    assert task("get_data", 1).returncode == 0
    first = task("validate_data", 1)
    assert first.returncode == 1
    assert re.fullmatch(r"mlopsnb: error: task 'validate_data' failed in cell \[\d+\]: RuntimeError: transient failure on the first attempt "
                        r"\(partial notebook: .*validate_data\.ipynb\) \(attempt 1\)", one_line(first)), first.stderr
    report = project / "products" / "data" / "validation.json"
    assert report.read_text() == '{"partial": '          # the half-written product is there...
    refused = task("split_data", 1)                       # ...and is not taken as finished
    assert refused.returncode == 1
    assert one_line(refused) == ("mlopsnb: error: task 'split_data': upstream 'validate_data' has not finished "
                                 "(product missing or its last run failed): run it first")
    second = task("validate_data", 2)
    assert second.returncode == 0, second.stderr
    assert json.loads(report.read_text())["violations"] == []
    client = store(project)
    runs = client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id])
    parents = [r for r in runs if r.data.tags.get("mlopsnb.task") == "(build)"]
    assert len(parents) == 1 and parents[0].data.tags["mlopsnb.airflow.run_id"] == "manual__1" and parents[0].info.status == "RUNNING"
    children = sorted((r.data.tags["mlopsnb.task"], r.data.tags["mlopsnb.attempt"], r.info.status) for r in runs if r not in parents)
    assert children == [("get_data", "1", "FINISHED"), ("validate_data", "1", "FAILED"), ("validate_data", "2", "FINISHED")]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs if r not in parents)


# ---- a real Airflow 3 DAG run -------------------------------------------------------------------------------------

def airflow_bin() -> Path:
    "Airflow's bin folder in .venv-airflow, installed by `make airflow` when missing (about a minute from a warm pip cache)."
    t0 = time.perf_counter()
    subprocess.run(["make", "-s", "airflow"], cwd=ROOT, check=True, capture_output=True, text=True, timeout=1200)
    print(f"make airflow: {time.perf_counter() - t0:.1f}s")
    return ROOT / ".venv-airflow" / "bin"


def airflow(bin_: Path, env: dict, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_ / "airflow"), *args], capture_output=True, text=True, env=env, timeout=timeout)


def child_runs(project: Path, parent) -> dict:
    "{(task, attempt): run} of a parent run's children."
    client = store(project)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {(r.data.tags["mlopsnb.task"], r.data.tags.get("mlopsnb.attempt", "1")): r for r in runs}


def only_parent(project: Path):
    client = store(project)
    runs = client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id], filter_string="tags.`mlopsnb.task` = '(build)'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_airflow_dag_run_retries_and_records_like_mlopsnb_run(tmp_path):
    bin_ = airflow_bin()
    project = with_airflow_settings(make_project(tmp_path / "p"))
    fail_once(project, tmp_path / "failed-once")
    dags = tmp_path / "dags"
    exported = cli(project, "export", "airflow", "--out", str(dags), "--engine", "inprocess", *SAMPLE)
    assert exported.returncode == 0, exported.stderr
    env = clean_env({"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                     "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
                     "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}",
                     "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})
    t0 = time.perf_counter()
    assert airflow(bin_, env, "db", "migrate").returncode == 0
    errors = airflow(bin_, env, "dags", "list-import-errors", "--local", "-o", "json")   # parsed now (without --local: what a dag processor stored)
    assert errors.returncode == 0 and json.loads(errors.stdout.strip().splitlines()[-1]) == [], errors.stdout + errors.stderr   # after a warning line
    ran = airflow(bin_, env, "dags", "test", "mlopsnb-churn")
    print(f"airflow db migrate + list-import-errors + dags test: {time.perf_counter() - t0:.1f}s")
    db = sqlite3.connect(tmp_path / "airflow" / "airflow.db")
    (run_id, state), = db.execute("select run_id, state from dag_run where dag_id = 'mlopsnb-churn'").fetchall()
    assert state == "success", ran.stdout[-3000:] + ran.stderr[-3000:]
    tries = dict(db.execute("select task_id, try_number from task_instance where run_id = ?", (run_id,)).fetchall())
    assert tries == {**{t: 1 for t in TASKS}, "validate_data": 2, "mlopsnb_finish": 1}
    assert json.loads((project / "products" / "data" / "validation.json").read_text())["violations"] == []   # the retry's, complete

    parent = only_parent(project)
    assert parent.data.tags["mlopsnb.airflow.run_id"] == run_id and parent.info.status == "FINISHED"
    assert parent.data.tags["mlopsnb.failed"] == "" and parent.data.tags["mlopsnb.skipped"] == ""
    runs = child_runs(project, parent)
    assert sorted(runs) == sorted([(t, "1") for t in TASKS] + [("validate_data", "2")])
    assert runs["validate_data", "1"].info.status == "FAILED" and "transient failure" in runs["validate_data", "1"].data.tags["mlopsnb.error"]
    assert all(r.info.status == "FINISHED" for k, r in runs.items() if k != ("validate_data", "1"))
    assert all(r.data.tags["mlopsnb.airflow.run_id"] == run_id for r in runs.values())
    assert cli(project, "run", "--engine", "inprocess", *SAMPLE).stdout.startswith(f"nothing to do: all {len(TASKS)} tasks are up to date")

    reference = make_project(tmp_path / "ref")          # the same pipeline built by `mlopsnb run` in another store
    built = cli(reference, "run", "--engine", "inprocess", *SAMPLE)
    assert built.returncode == 0, built.stderr
    ref_parent = only_parent(reference)
    ref = {task: r for (task, _), r in child_runs(reference, ref_parent).items()}
    last = {task: r for (task, attempt), r in sorted(runs.items(), key=lambda kv: kv[0][1])}
    assert sorted(ref) == sorted(last)
    for task, r in ref.items():
        assert last[task].data.params == r.data.params, task
        assert sorted(last[task].data.metrics) == sorted(r.data.metrics), task
        assert last[task].data.metrics == pytest.approx(r.data.metrics, rel=1e-9, nan_ok=True), task   # every one (none measures time)
    for tag in ("mlopsnb.pipeline", "mlopsnb.data_digest", "mlopsnb.version"):   # not the pipeline hash: this spec has an airflow section
        assert parent.data.tags[tag] == ref_parent.data.tags[tag], tag
