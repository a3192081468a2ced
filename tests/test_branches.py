"""Branches: train_model and evaluate_model once per model family (executor.branches), select_model picks by validation metric."""
import json
import re
import time

import pytest

from conftest import SAMPLE, cli, executed, make_project, skipped, store

BRANCHES = ["logistic_regression", "hist_gradient_boosting"]
TRAIN = [f"train_model-{b}" for b in BRANCHES]
EVALUATE = [f"evaluate_model-{b}" for b in BRANCHES]
TASKS = ["get_data", "validate_data", "split_data", *TRAIN, *EVALUATE, "select_model", "promote_model"]
FAST = ["--engine", "inprocess", *SAMPLE]


@pytest.fixture(scope="module")
def spec_only(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("spec"), git=False)


def test_the_expanded_dag_has_a_branch_per_family_wired_to_itself(spec_only):
    from mlopsnb.config import Project
    from mlopsnb.build import load_dag
    dag = load_dag(Project.load(spec_only), engine="inprocess")
    assert list(dag) == TASKS
    ups = {name: set(dag[name].upstream) for name in dag}
    for b in BRANCHES:
        assert ups[f"train_model-{b}"] == {"split_data", "validate_data"}     # the contract it ships inside the model
        assert ups[f"evaluate_model-{b}"] == {"split_data", f"train_model-{b}"}     # its own branch's model only
        assert dag[f"train_model-{b}"].params["grid"] and all(e["family"] == b for e in dag[f"train_model-{b}"].params["grid"])
        assert str(dag[f"train_model-{b}"].product["model"]).endswith(f"products/branches/{b}/model/mlflow_model")
    assert ups["select_model"] == set(TRAIN) | set(EVALUATE)
    assert ups["promote_model"] == {"validate_data", "split_data", "select_model"}
    # the notebook reads its own branch's model as upstream["train_model"], and every branch's evaluation grouped
    dag.render(force=True, show_progress=False)
    up = dag["evaluate_model-logistic_regression"].params["upstream"]
    assert set(up) == {"split_data", "train_model"} and str(up["train_model"]["info"]).endswith("branches/logistic_regression/model/model.json")
    up = dag["select_model"].params["upstream"]
    assert set(up["evaluate_model"]) == set(EVALUATE) and set(up["train_model"]) == set(TRAIN)
    assert str(dag["select_model"].product["model"]).endswith("products/model/mlflow_model")   # where consumers read it


BAD = [
    ("{tasks: [train_model, fit_model], by: train_model.grid.family}",
     "pipeline.yaml: executor.branches.tasks: 'fit_model' is not a task in pipeline.yaml"),
    ("{tasks: [train_model, evaluate_model], by: train_model.grid.family, each: 2}",
     "pipeline.yaml: executor.branches: unknown key 'each' (expected one of by, tasks)"),
    ("{tasks: train_model, by: train_model.grid.family}",
     "pipeline.yaml: executor.branches.tasks: expected a non-empty list of task names"),
    ("{tasks: [train_model, evaluate_model], by: train_model.grid}",
     "pipeline.yaml: executor.branches.by: expected <task>.<list param>.<key>, got 'train_model.grid'"),
    ("{tasks: [train_model, evaluate_model], by: train_model.metric.family}",
     "pipeline.yaml: executor.branches.by: task 'train_model': param 'metric' must be a non-empty list of mappings, each with 'family'"),
]


def with_branches(project, branches):
    spec = project / "pipeline.yaml"
    text = spec.read_text()
    spec.write_text(text[:text.index("  branches:")] + f"  branches: {branches}\n" + text[text.index("\ntasks:"):])


def test_a_bad_branch_declaration_is_one_line(tmp_path):
    from mlopsnb.config import ConfigError, check_pipeline
    project = make_project(tmp_path / "p", git=False)
    for branches, error in BAD:
        with_branches(project, branches)
        with pytest.raises(ConfigError) as e: check_pipeline(project)
        assert str(e.value) == error


@pytest.mark.slow
def test_a_bad_branch_declaration_stops_the_run_with_one_line(tmp_path):
    project = make_project(tmp_path / "p", git=False)
    with_branches(project, BAD[0][0])       # that line, no traceback, before any task runs
    r = cli(project, "run", *SAMPLE)
    assert r.returncode == 1 and r.stderr.strip() == f"mlopsnb: error: {BAD[0][1]}", r.stderr
    assert not (project / "products").exists()


@pytest.fixture(scope="module")
def branched(tmp_path_factory):
    "The reference project built once, serially, in process."
    project = make_project(tmp_path_factory.mktemp("branched"))
    result = cli(project, "run", *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    return project, result


def selection(project):
    return json.loads((project / "products/model/selection.json").read_text())


@pytest.mark.slow
def test_each_branch_task_is_its_own_child_run(branched):
    project, result = branched
    assert executed(result) == TASKS, result.stdout
    client = store(project)
    exp = client.get_experiment_by_name("mlopsnb-churn")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags["mlopsnb.task"] == "(build)")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(TASKS)
    assert all(children[t].data.tags["mlopsnb.task"] == t for t in TASKS)
    assert children["train_model-logistic_regression"].data.params["best_family"] == "logistic_regression"
    assert children["train_model-hist_gradient_boosting"].data.params["best_family"] == "hist_gradient_boosting"


@pytest.mark.slow
def test_select_model_picks_the_best_validation_metric_and_exposes_it(branched):
    project, result = branched
    client = store(project)
    exp = client.get_experiment_by_name("mlopsnb-churn")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    val = {b: runs[f"train_model-{b}"].data.metrics["val_roc_auc"] for b in BRANCHES}   # as train_model recorded them
    best = max(BRANCHES, key=lambda b: val[b])
    sel = selection(project)
    assert sel["selected"] == best and sel["metric"] == "val_roc_auc"
    assert {r["branch"]: r["val_roc_auc"] for r in sel["branches"]} == pytest.approx(val)
    chosen = runs["select_model"].data
    assert chosen.params["selected_branch"] == best
    assert chosen.metrics[f"val_roc_auc_{best}"] == pytest.approx(val[best])
    assert "selection.json" in {a.path for a in client.list_artifacts(runs["select_model"].info.run_id)}
    # the winner's products where every consumer reads them: promotion registered exactly that model
    info = json.loads((project / "products/model/model.json").read_text())
    won = json.loads((project / f"products/branches/{best}/model/model.json").read_text())
    assert info == won
    assert (project / "products/evaluation/metrics.json").read_text() == (project / f"products/branches/{best}/evaluation/metrics.json").read_text()
    assert (project / "products/evaluation/fairness.csv").is_file() and (project / "products/model/reference.json").is_file()
    version = client.get_model_version("churn", "1")
    assert json.loads(version.tags["mlopsnb.manifest"]) == won["manifest"]          # the winning branch's model bytes
    assert re.search(r"^metrics \(select_model\): roc_auc 0\.\d+", result.stdout, re.M), result.stdout


@pytest.mark.slow
def test_changing_one_branch_reruns_only_that_branch_and_what_follows(branched):
    project, _ = branched
    spec = project / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("C: [0.1, 1.0]", "C: [0.1, 1.0, 10.0]"))
    t0 = time.perf_counter()
    r = cli(project, "run", *FAST)
    assert r.returncode == 0, r.stderr
    assert executed(r) == ["train_model-logistic_regression", "evaluate_model-logistic_regression", "select_model", "promote_model"], r.stdout
    assert set(skipped(r)) == {"get_data", "validate_data", "split_data", "train_model-hist_gradient_boosting",
                               "evaluate_model-hist_gradient_boosting"}, r.stdout
    rows = {x["branch"]: x for x in selection(project)["branches"]}
    assert rows["logistic_regression"]["candidate"].startswith("logistic_regression-C=")
    print(f"incremental rebuild: {time.perf_counter() - t0:.1f}s")


@pytest.mark.slow
def test_two_jobs_run_the_branches_side_by_side_and_select_the_same(branched):
    project, _ = branched
    before = selection(project)
    r = cli(project, "run", "--force", "--jobs", "2", *FAST)
    assert r.returncode == 0, r.stderr
    assert sorted(executed(r)) == sorted(TASKS), r.stdout
    after = selection(project)
    assert after["selected"] == before["selected"]
    assert [x["val_roc_auc"] for x in after["branches"]] == pytest.approx([x["val_roc_auc"] for x in before["branches"]])
