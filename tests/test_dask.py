"""Data-parallel batch scoring on Dask (`mlopsnb score --dask`): the same output and MLflow record as single-process scoring."""
import socket

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE, cli, make_project, store
from test_serve import _new_version, raw_test_rows

pytestmark = pytest.mark.slow
CHUNK = "100"     # 1,000 rows: ten chunks, in five partitions on two workers


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    p = make_project(tmp_path_factory.mktemp("dask"))
    r = cli(p, "run", "--engine", "inprocess", *SAMPLE)
    assert r.returncode == 0, r.stdout + r.stderr
    return p


@pytest.fixture(scope="module")
def rows(project):
    "1,000 raw records resampled from the test set, with fresh ids; one chunk holds a category no encoder knows (the sklearn path)."
    raw, _ = raw_test_rows(project)
    df = raw.sample(1000, replace=True, random_state=0).reset_index(drop=True)
    df["rownames"] = np.arange(10_000, 11_000)
    df.loc[[250, 260], "internet_service"] = "Satellite"       # chunk 2 of 10 falls back to sklearn in both modes
    return df


def _runs(project, executor=None):
    client = store(project)
    exp = client.get_experiment_by_name("mlopsnb-churn").experiment_id
    runs = client.search_runs([exp], "tags.`mlopsnb.task` = 'score'")
    return [r for r in runs if r.data.tags.get("mlopsnb.executor") == executor]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_dask_output_identical_to_single_process(project, rows, tmp_path, fmt):
    src = tmp_path / f"rows.{fmt}"
    if fmt == "csv": rows.to_csv(src, index=False)
    else: rows.to_parquet(src, row_group_size=170)                 # row groups that do not line up with chunks
    one = cli(project, "score", str(src), str(tmp_path / "one.parquet"), "--chunk-rows", CHUNK)
    assert one.returncode == 0, one.stderr
    par = cli(project, "score", str(src), str(tmp_path / "dask.parquet"), "--chunk-rows", CHUNK, "--dask", "--workers", "2")
    assert par.returncode == 0, par.stderr
    same = lambda out: (out.split(" into ")[0], out.split(".parquet: ")[1].split(" (run ")[0])
    assert same(par.stdout) == same(one.stdout), (one.stdout, par.stdout)                    # same rows, version, path, mean
    assert "on Dask: 2 workers, 5 partitions" in par.stdout, par.stdout
    a, b = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "dask.parquet")
    pd.testing.assert_frame_equal(b, a, check_exact=True)
    assert b["rownames"].tolist() == rows["rownames"].tolist()                                # ids carried, in order
    import pyarrow.parquet as pq
    assert pq.read_schema(tmp_path / "dask.parquet") == pq.read_schema(tmp_path / "one.parquet")
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".dask.parquet")]           # part files removed
    single, dask = _runs(project)[0], _runs(project, "dask")[0]                                  # newest first
    assert dask.data.params["input"] == single.data.params["input"] == str(src)
    assert {k: v for k, v in dask.data.params.items() if k not in {"output", "dask_workers", "dask_partitions"}} == \
           {k: v for k, v in single.data.params.items() if k != "output"}
    assert dask.data.metrics == single.data.metrics and dask.data.metrics["rows"] == 1000
    assert (dask.data.params["dask_workers"], dask.data.params["dask_partitions"]) == ("2", "5")
    assert dask.info.status == "FINISHED"


def test_csv_text_columns_read_as_single_process_reads_them(project, rows, tmp_path):
    "A category whose values look like numbers in one partition stays text on Dask too (was: guessed per partition, refused)."
    df = rows.copy()
    df.loc[800:, "internet_service"] = "7"          # the last partition's two chunks: digits only in a category column
    src = tmp_path / "rows.csv"
    df.to_csv(src, index=False)
    one = cli(project, "score", str(src), str(tmp_path / "one.parquet"), "--chunk-rows", CHUNK)
    assert one.returncode == 0, one.stderr
    par = cli(project, "score", str(src), str(tmp_path / "dask.parquet"), "--chunk-rows", CHUNK, "--dask", "--workers", "2")
    assert par.returncode == 0, par.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dask.parquet"), pd.read_parquet(tmp_path / "one.parquet"), check_exact=True)


def test_bad_scheduler_one_line(project, rows, tmp_path):
    src = tmp_path / "rows.parquet"; rows.to_parquet(src)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]                   # nothing listens there
    r = cli(project, "score", str(src), str(tmp_path / "out.parquet"), "--dask", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith(f"mlopsnb: error: Dask scheduler tcp://127.0.0.1:{port}: not reachable"), r.stderr
    assert not (tmp_path / "out.parquet").exists()
    r = cli(project, "score", str(src), str(tmp_path / "out.parquet"), "--workers", "2")
    assert r.returncode == 1 and "go with --dask" in r.stderr, r.stderr


def test_tampered_or_absent_model_refused_like_single_process(project, rows, tmp_path):
    src = tmp_path / "rows.parquet"; rows.to_parquet(src)
    bad = _new_version(project, tamper=True)
    for version in (bad, "99"):
        one = cli(project, "score", str(src), str(tmp_path / "a.parquet"), "--version", version)
        par = cli(project, "score", str(src), str(tmp_path / "b.parquet"), "--version", version, "--dask", "--workers", "2")
        assert one.returncode == par.returncode == 1, (one.stderr, par.stderr)
        assert par.stderr == one.stderr and par.stderr.strip().count("\n") == 0, par.stderr
        assert not (tmp_path / "b.parquet").exists()


def test_bad_row_named_like_single_process(project, rows, tmp_path):
    src = tmp_path / "rows.csv"
    bad = rows.copy(); bad["tenure"] = bad["tenure"].astype(object); bad.loc[734, "tenure"] = "many"
    bad.to_csv(src, index=False)
    par = cli(project, "score", str(src), str(tmp_path / "b.parquet"), "--chunk-rows", CHUNK, "--dask", "--workers", "2")
    assert par.returncode == 1, par.stderr     # score_file's message for the same row (tests/test_serve.py checks that one)
    *progress, last = par.stderr.splitlines()  # progress lines (at most one per 2 s, outside a terminal), then the one error line
    assert last == f"mlopsnb: error: {src}: row 734, field 'tenure': expected a number (rows counted from 0, header excluded)", par.stderr
    assert all(l.startswith(f"scoring {src}: ") for l in progress), par.stderr
    assert not (tmp_path / "b.parquet").exists() and not [f for f in tmp_path.iterdir() if f.name.startswith(".b.parquet")]
