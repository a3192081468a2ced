"""Promotion you can trust: declared gates, champion/challenger, audit history, rollback, safe artifacts."""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, SAMPLE, clean_env, cli, executed, make_project, set_grid, store

FAST = ["--engine", "inprocess", *SAMPLE]
WEAK_GRID = "        - family: logistic_regression\n          C: [0.0003]\n"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    "A project built twice: v1 the champion, then a weaker grid whose v2 must be held back."
    project = make_project(tmp_path_factory.mktemp("promo"))
    first = cli(project, "run", *FAST)
    assert first.returncode == 0, first.stdout + first.stderr
    set_grid(project, WEAK_GRID)
    second = cli(project, "run", *FAST)
    assert second.returncode == 0, second.stdout + second.stderr
    return project, first, second


def test_first_model_becomes_champion_weaker_one_is_held(promoted):
    project, first, second = promoted
    assert "model: churn version 1 @challenger @champion (promoted: promote_model: all" in first.stdout, first.stdout
    assert executed(second) == ["train_model-logistic_regression", "evaluate_model-logistic_regression", "select_model", "promote_model"]
    assert "model: churn version 2 @challenger (held: promote_model: gate 'beats champion on roc_auc' failed (0." in second.stdout, second.stdout
    client = store(project)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("churn", "challenger").version) == "2"
    decision = json.loads(client.get_model_version("churn", "2").tags["mlopsnb.decision"])
    assert decision["promoted"] is False
    failed = [g for g in decision["gates"] if not g["passed"]]
    assert [g["gate"] for g in failed][:1] == ["beats champion on roc_auc"] and failed[0]["value"] < failed[0]["threshold"]
    assert json.loads((project / "products/promotion/decision.json").read_text())["version"] == "2"


def test_the_same_model_is_registered_once(promoted, tmp_path):
    "A rebuild that trains a registered model again registers nothing and says which version it is; another grid registers anew."
    import shutil
    project = tmp_path / "p"
    shutil.copytree(promoted[0], project)
    client = store(project)
    again = cli(project, "run", "--force", *FAST)                      # every task again, on the same data: the same model
    assert again.returncode == 0 and len(executed(again)) == 7, again.stdout + again.stderr   # one family in this grid
    assert "model: churn version 2 @challenger (unchanged: the same model as version 2)" in again.stdout, again.stdout
    assert len(client.search_model_versions("name='churn'")) == 2
    decision = json.loads((project / "products/promotion/decision.json").read_text())
    assert (decision["version"], decision["unchanged"]) == ("2", True)
    subprocess.run(["git", "checkout", "-q", "pipeline.yaml"], cwd=project, check=True)   # the first grid back: version 1's model
    back = cli(project, "run", *FAST)
    assert "model: churn version 1 @champion (unchanged: the same model as version 1)" in back.stdout, back.stdout
    set_grid(project, "        - family: logistic_regression\n          C: [0.5]\n")     # a real change
    other = cli(project, "run", *FAST)
    assert "model: churn version 3 @challenger (held: " in other.stdout, other.stdout
    digests = [client.get_model_version("churn", v).tags["mlopsnb.model_digest"] for v in ("1", "2", "3")]
    assert len(set(digests)) == 3 and len(client.search_model_versions("name='churn'")) == 3
    from mlopsnb.config import Store
    from mlopsnb.registry import history
    entries = history(Store(f"sqlite:///{project / 'mlflow.db'}"), "churn")
    assert len(entries) == 6, entries      # v1, v2 and v3: @challenger, then the decision on @champion; the unchanged builds: none


def test_history_promote_and_rollback_from_the_cli(promoted, tmp_path):
    import shutil
    project = tmp_path / "p"
    shutil.copytree(promoted[0], project)
    held = cli(project, "promote", "churn", "2", "--reason", "try the simpler model")
    assert held.returncode == 1 and "gate 'beats champion on roc_auc' failed" in held.stderr, held.stderr
    assert "FAIL  beats champion on roc_auc" in held.stdout
    forced = cli(project, "promote", "churn", "2", "--reason", "simpler to explain", "--force")
    assert forced.returncode == 0 and "version 2 is now @champion" in forced.stdout, forced.stderr
    hist = cli(project, "history", "churn", "--alias", "champion")
    lines = hist.stdout.splitlines()[1:]
    actions = [next(w for w in l.split()[4:] if w in {"promote", "held", "refused", "forced"}) for l in lines]
    assert actions == ["promote", "held", "refused", "forced"], hist.stdout      # every decision, held and refused ones too
    assert "kept 1 (v2)" in lines[1] and "gate 'beats champion on roc_auc' failed" in lines[2], hist.stdout
    assert "forced: simpler to explain" in hist.stdout
    rb = cli(project, "rollback", "churn", "--reason", "complaints")
    assert rb.returncode == 0 and "rolled back from version 2 to 1" in rb.stdout
    assert str(store(project).get_model_version_by_alias("churn", "champion").version) == "1"
    again = cli(project, "rollback", "churn")
    assert again.returncode == 1 and "no previous champion" in again.stderr
    full = cli(project, "history", "churn").stdout
    assert "challenger" in full and "complaints" in full


def test_every_gate_is_enforced(tmp_path):
    project = make_project(tmp_path / "p")
    spec = project / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("minimums: {roc_auc: 0.80", "minimums: {roc_auc: 0.99"))
    r = cli(project, "run", *FAST)
    assert r.returncode == 0, r.stderr
    assert "held: promote_model: gate 'min roc_auc' failed" in r.stdout, r.stdout
    client = store(project)
    with pytest.raises(Exception): client.get_model_version_by_alias("churn", "champion")


def test_invalid_policy_key_fails_at_load_time(tmp_path):
    project = make_project(tmp_path / "p")
    spec = project / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("max_fairness_gap:", "max_fairnes_gap:"))
    r = cli(project, "run", *FAST)
    assert r.returncode == 1 and not (project / "products").exists()
    assert r.stderr.strip() == "mlopsnb: error: pipeline.yaml: task 'promote_model': policy: max_fairnes_gap: unknown key"


def test_concurrent_promotions_never_lose_a_move(promoted, tmp_path):
    import shutil
    project = tmp_path / "p"
    shutil.copytree(promoted[0], project)
    procs = [subprocess.Popen([str(BIN / "mlopsnb"), "promote", "churn", v, "--reason", f"race {i}", "--force"],
                              cwd=project, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, v in enumerate(["2", "1", "2", "1", "2", "1"])]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode in (0, 1) for p in procs), outs
    hist = json.loads(subprocess.run(
        [str(BIN / "python"), "-c", "import json; from mlopsnb.config import Store; from mlopsnb.registry import history;"
         f"print(json.dumps(history(Store('sqlite:///{project}/mlflow.db'), 'churn', 'champion')))"],
        capture_output=True, text=True, check=True, env=clean_env()).stdout)
    hist = [e for e in hist if e["action"] not in {"held", "refused"}]       # decisions that moved nothing
    moved = sum("is now @champion" in o for o, _ in outs)
    assert len(hist) == 1 + moved                                  # the first promotion, then every move that happened
    assert [e["seq"] for e in hist] == sorted(e["seq"] for e in hist)
    for before, after in zip(hist, hist[1:]):
        assert after["from"] == before["to"], hist                # each move starts where the last one ended
    assert str(store(project).get_model_version_by_alias("churn", "champion").version) == hist[-1]["to"]


def test_corrupted_model_is_refused(promoted, tmp_path):
    import shutil
    project = tmp_path / "p"
    shutil.copytree(promoted[0], project)
    client = store(project)
    mv = client.get_model_version("churn", "1")
    from urllib.parse import unquote, urlparse
    target = Path(unquote(urlparse(mv.source).path)) / "model.skops"
    assert target.is_file() and target.is_relative_to(promoted[0] / "mlartifacts"), mv.source
    code = ("import sys; from mlopsnb.config import Store; from mlopsnb.registry import load_version"
            "\ntry: load_version(Store(sys.argv[1]), 'churn', sys.argv[2]); print('loaded')\nexcept Exception as e: print(type(e).__name__, e)")
    load = lambda v: subprocess.run([str(BIN / "python"), "-c", code, f"sqlite:///{project}/mlflow.db", v],
                                    capture_output=True, text=True, env=clean_env()).stdout.strip()
    assert load("1") == "loaded" and load("2") == "loaded"
    original = target.read_bytes()
    try:
        data = bytearray(original); data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))                              # flip a byte
        assert load("1") == "IntegrityError model churn version 1: model.skops does not match its sha256 manifest"
        target.write_bytes(original[: len(original) // 2])           # truncate
        assert "model.skops does not match its sha256 manifest" in load("@champion")
        assert load("2") == "loaded"
    finally:
        target.write_bytes(original)
