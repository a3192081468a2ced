"""evaluate_model on a real build: the report, the value and fairness metrics, and the metrics.json other tasks read."""
import json
import re

import pytest

from conftest import store

pytestmark = pytest.mark.slow
METRICS = {"roc_auc", "pr_auc", "f1", "log_loss", "brier", "calibration_error",
           "value_per_customer", "best_threshold", "value_at_best_threshold"}
GAPS = {"selection_rate_gap", "tpr_gap", "fpr_gap", "max_gap", "max_gap_lo", "max_gap_hi"}


def evaluate_run(project):
    client = store(project)
    exp = client.get_experiment_by_name("mlopsnb-churn")
    branch = json.loads((project / "products/model/selection.json").read_text())["selected"]   # the evaluation select_model exposed
    runs = client.search_runs([exp.experiment_id], f"tags.`mlopsnb.task` = 'evaluate_model-{branch}'", order_by=["attributes.start_time DESC"])
    return client, runs[0]


def test_metrics_json_has_the_shape_promotion_reads(built):
    project, _ = built
    doc = json.loads((project / "products/evaluation/metrics.json").read_text())
    assert set(doc) == {"threshold", "rows", "metrics", "fairness", "fairness_max_gap", "fairness_max_gap_ci", "champion"}
    assert doc["threshold"] == 0.5 and isinstance(doc["rows"], int) and doc["rows"] > 50
    assert METRICS <= set(doc["metrics"]) and all(isinstance(doc["metrics"][k], float) for k in METRICS)
    m = doc["metrics"]
    assert 0 <= m["best_threshold"] <= 1 and m["value_at_best_threshold"] >= m["value_per_customer"]
    assert set(doc["fairness"]) == {"female", "senior_citizen"}
    for gaps in doc["fairness"].values():    # a group under min_group_size (senior citizens in a 600-row sample) leaves no gap
        assert set(gaps) == GAPS and (gaps["max_gap"] is None or 0 <= gaps["max_gap"] <= 1)
    assert doc["fairness_max_gap"] == max(g["max_gap"] for g in doc["fairness"].values() if g["max_gap"] is not None)
    lo, hi = doc["fairness_max_gap_ci"]                     # its bootstrap interval
    assert 0 <= lo <= hi <= 1
    assert doc["champion"] is None                          # the first build has no champion to compare with


def test_evaluation_run_has_the_report_tables_and_value_and_fairness_metrics(built, tmp_path):
    project, _ = built
    client, run = evaluate_run(project)
    ms = run.data.metrics
    assert METRICS | {"fairness_max_gap", "fairness_female_max_gap"} <= set(ms)
    assert not [k for k in ms if k.startswith("champion_")]
    assert json.loads(run.data.params["value_matrix"]) == {"tp": 100, "fp": -50, "fn": 0, "tn": 0}
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/metrics.json", "evaluation/tables"} <= arts, arts
    tables = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "evaluation/tables")}
    assert {"roc_curve.csv", "pr_curve.csv", "calibration.csv", "value_curve.csv", "fairness.csv", "fairness_gaps.csv",
            "importance.csv", "metrics.csv"} <= tables, tables
    page = open(client.download_artifacts(run.info.run_id, "evaluation/report.html", str(tmp_path))).read()
    assert page.startswith("<!DOCTYPE html>") and len(re.findall(r'src="data:image/png;base64,', page)) == 6
    outside = re.sub(r"(data:image/png;base64,)[A-Za-z0-9+/=]+", r"\1", page)
    assert not re.search(r"<script|<link|https?://", outside)           # self-contained: nothing to fetch
    assert page == (project / "products/evaluation/report.html").read_text()
