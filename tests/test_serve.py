"""The scoring service over real HTTP and batch scoring, on a project built once on the sample."""
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import BIN, SAMPLE, clean_env, cli, make_project

pytestmark = pytest.mark.slow
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_ROWS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


class Server:
    "`mlopsnb serve` started in a project on a free loopback port; always stopped by the test."
    def __init__(self, project: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "mlopsnb"), "serve", "--port", str(self.port), *args], cwd=project,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(env))

    def wait(self, timeout: float = 120) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None: raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200: return self
            except httpx.TransportError: pass
            time.sleep(0.3)
        raise AssertionError("server did not start")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    p = make_project(tmp_path_factory.mktemp("serve"))
    r = cli(p, "run", "--engine", "inprocess", *SAMPLE)
    assert r.returncode == 0, r.stdout + r.stderr
    return p


@pytest.fixture(scope="module")
def server(project):
    s = Server(project, "--reload-interval", "1", "--max-rows", str(MAX_ROWS), "--micro-batch-ms", "2", env={"MLOPSNB_TOKEN": TOKEN})
    try: yield s.wait()
    finally: s.stop()


def raw_test_rows(project) -> pd.DataFrame:
    "The test set's raw records as the source has them (read with mlopsnb.data.read_source), in predictions.parquet order."
    from mlopsnb.config import Project
    from mlopsnb.data import read_source
    pred = pd.read_parquet(project / "products/evaluation/predictions.parquet")
    raw = read_source(Project.load(project, environ={}).env.data, project).set_index("rownames", drop=False)
    return raw.loc[pred["rownames"]].drop(columns=["churn"]).reset_index(drop=True), pred


def records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))   # NaN -> null, numpy types -> JSON


def predict(server, body, headers=None, **kw) -> httpx.Response:
    h = {**AUTH, **(headers or {})}
    if isinstance(body, (bytes, str)): return httpx.post(server.url + "/predict", content=body, headers={"content-type": "application/json", **h}, timeout=30, **kw)
    return httpx.post(server.url + "/predict", json=body, headers=h, timeout=30, **kw)


def test_endpoints(server, project):
    rows, _ = raw_test_rows(project)
    r = predict(server, records(rows.head(3)), headers={"x-request-id": "req-1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model"], out["version"], out["path"], out["threshold"], out["request_id"]) == ("churn", "1", "onnx", 0.5, "req-1")
    assert [p["rownames"] for p in out["predictions"]] == rows["rownames"].head(3).tolist()          # ids echoed back
    assert all(p["decision"] == int(p["probability"] >= 0.5) for p in out["predictions"])
    one = predict(server, records(rows.head(1))[0]).json()                                          # one record, not a list
    assert len(one["predictions"]) == 1 and one["request_id"] != "req-1"
    assert httpx.get(server.url + "/ready", headers=AUTH).json() == {"ready": True, "model": "churn", "version": "1"}
    v = httpx.get(server.url + "/version", headers=AUTH).json()
    assert (v["path"], v["onnx"]["converted"]) == ("onnx", True)
    assert v["threshold_source"] == "version 1 (the training build's train_model.threshold)"
    assert v["onnx"]["max_abs_diff"] <= 1e-6
    m = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert 'mlopsnb_requests_total{role="champion",status="200",version="1"}' in m and "mlopsnb_request_seconds_bucket" in m
    assert "mlopsnb_batch_rows_bucket" in m and "mlopsnb_score_bucket" in m and 'mlopsnb_model_info{name="churn",path="onnx",role="champion",version="1"} 1.0' in m
    spec = httpx.get(server.url + "/openapi.json", headers=AUTH).json()
    schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["anyOf"][0]
    assert "tenure" in schema["required"] and "rownames" in schema["properties"]
    assert httpx.get(server.url + "/docs", headers=AUTH).status_code == 200


def test_auth(server):
    assert httpx.get(server.url + "/health").status_code == 200                    # open
    for path in ("/ready", "/version", "/metrics", "/openapi.json"):
        assert httpx.get(server.url + path).status_code == 401, path
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    r = httpx.post(server.url + "/predict", json={"a": 1})
    assert r.status_code == 401 and "token" in r.json()["detail"]


def test_bad_requests_are_4xx_naming_row_and_field(server, project):
    rows, _ = raw_test_rows(project)
    good = records(rows.head(2))
    def with_(i, **kw): return [dict(r, **kw) if j == i else r for j, r in enumerate(good)]
    def without(i, col): return [{k: v for k, v in r.items() if not (j == i and k == col)} for j, r in enumerate(good)]
    cases = [
        (without(1, "tenure"), 422, "row 1: missing field 'tenure'"),
        (with_(0, colour="SECRETVALUE"), 422, "row 0: unknown field 'colour'"),
        (with_(1, tenure="SECRETVALUE"), 422, "row 1, field 'tenure': expected a number"),
        (with_(0, contract=3), 422, "row 0, field 'contract': expected text, found a number"),
        (with_(0, female=True), 422, "row 0, field 'female': expected a number, found a boolean"),
        (with_(1, tenure=None), 422, "row 1, field 'tenure': may not be blank (data contract)"),
        (with_(1, tenure=1000), 422, "row 1, field 'tenure': above the data contract's max 72"),
        (with_(0, monthly_charges=-5), 422, "row 0, field 'monthly_charges': below the data contract's min"),
        ([], 422, "empty batch"),
        (good * (MAX_ROWS // 2 + 1), 413, f"more than the {MAX_ROWS} allowed"),
        (b'[{"tenure": SECRETVALUE', 400, "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "malformed JSON"),                   # deep nesting
        (b" " * (1 << 20) + b"[]", 413, "larger than 1048576 bytes"),              # over the 1 MiB default
        (b'"just text"', 422, "expected a JSON object"),
    ]
    for body, status, message in cases:
        r = predict(server, body)
        assert r.status_code == status and message in r.json()["detail"], (message, r.status_code, r.text[:300])
        assert "SECRETVALUE" not in r.text                                          # the body is never echoed
    r = httpx.post(server.url + "/predict", content=json.dumps(good), headers={**AUTH, "content-type": "text/plain"})
    assert r.status_code == 415
    unknown = predict(server, with_(0, contract="Ten-year"))                       # unknown category: accepted, counted
    assert unknown.status_code == 200
    assert 'mlopsnb_unknown_categories_total{column="contract"}' in httpx.get(server.url + "/metrics", headers=AUTH).text
    assert httpx.get(server.url + "/ready", headers=AUTH).status_code == 200


def _malformed(good: list[dict], numbers: set[str], nullable: set[str]):
    "A hypothesis strategy of (body bytes, content type) that no valid request matches: one mutation of a good 3-row batch."
    from hypothesis import strategies as st
    cols = sorted(good[0])
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
    anyjson = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=8)
    def not_a_number(t: str) -> bool:
        try: float(t.strip()); return False
        except ValueError: return t.strip() != ""
    def bad_value(col: str):
        if col in numbers:
            return st.one_of(st.booleans(), st.lists(anyjson, max_size=3), st.dictionaries(st.text(max_size=5), anyjson, max_size=3),
                             st.text(max_size=30).filter(not_a_number), st.integers(min_value=2 ** 64, max_value=10 ** 40),
                             st.floats(min_value=1e39, max_value=1e300), *([st.none()] if col not in nullable else []))
        return st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.lists(anyjson, max_size=3),
                         st.dictionaries(st.text(max_size=5), anyjson, max_size=3), *([st.none()] if col not in nullable else []))
    def dumps(doc) -> bytes: return json.dumps(doc).encode()
    row = st.integers(0, len(good) - 1)
    wrong_value = st.tuples(row, st.sampled_from([c for c in cols if c != "rownames"])).flatmap(   # an id column takes any value
        lambda rc: bad_value(rc[1]).map(lambda v: dumps([dict(r, **{rc[1]: v}) if i == rc[0] else r for i, r in enumerate(good)])))
    missing = st.tuples(row, st.sampled_from([c for c in cols if c != "rownames"])).map(
        lambda rc: dumps([{k: v for k, v in r.items() if not (i == rc[0] and k == rc[1])} for i, r in enumerate(good)]))
    unknown = st.tuples(row, st.text(min_size=1, max_size=30).filter(lambda k: k not in good[0]), anyjson).map(
        lambda rkv: dumps([dict(r, **{rkv[1]: rkv[2]}) if i == rkv[0] else r for i, r in enumerate(good)]))
    not_records = st.one_of(scalars, st.lists(st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=4)).map(dumps)
    truncated = st.integers(1, len(dumps(good)) - 1).map(lambda n: dumps(good)[:n])
    garbage = st.binary(min_size=1, max_size=200)
    body = st.one_of(wrong_value, missing, unknown, not_records, truncated, garbage)
    ctype = st.sampled_from(["application/json"] * 8 + ["text/plain", "application/x-www-form-urlencoded", ""])
    return st.tuples(body, ctype)


def test_fuzzed_malformed_requests_are_all_4xx_and_the_service_stays_ready(server, project):
    from hypothesis import HealthCheck, given, settings
    rows, _ = raw_test_rows(project)
    good = records(rows.head(3))
    spec = httpx.get(server.url + "/openapi.json", headers=AUTH).json()
    props = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["anyOf"][0]["properties"]
    numbers = {c for c, p in props.items() if "number" in p.get("type", [])}
    assert "tenure" in numbers and "contract" not in numbers
    http, seen = httpx.Client(base_url=server.url, headers=AUTH, timeout=30), []

    @settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(_malformed(good, numbers, nullable={"total_charges"}))
    def check(case):
        body, ctype = case
        r = http.post("/predict", content=body, headers={"content-type": ctype} if ctype else {})
        seen.append(r.status_code)
        assert 400 <= r.status_code < 500, (r.status_code, body[:200], r.text[:200])
    try: check()
    finally: http.close()
    assert len(seen) >= 300 and {400, 415, 422} <= set(seen), sorted(set(seen))
    assert httpx.get(server.url + "/ready", headers=AUTH).status_code == 200
    assert predict(server, good).status_code == 200


def test_parity_in_process_http_and_batch(server, project, tmp_path):
    from mlopsnb.config import Project
    from mlopsnb.registry import load_version
    rows, pred = raw_test_rows(project)
    model = load_version(Project.load(project, environ={}).store, "churn", "@champion")
    in_process = model.predict_proba(rows.drop(columns=["rownames"]))[:, 1]
    np.testing.assert_allclose(in_process, pred["probability"], rtol=0, atol=1e-12)   # the registered model is the evaluated one
    http = predict(server, records(rows)).json()["predictions"]
    assert [p["rownames"] for p in http] == pred["rownames"].tolist()
    http_p = np.array([p["probability"] for p in http])
    from concurrent.futures import ThreadPoolExecutor                                 # concurrent single rows: micro-batched, each its own answer
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c, ThreadPoolExecutor(8) as pool:
        single = list(pool.map(lambda r: c.post("/predict", json=r).json()["predictions"][0], records(rows)))
    assert [p["rownames"] for p in single] == pred["rownames"].tolist()
    np.testing.assert_allclose([p["probability"] for p in single], http_p, rtol=0, atol=5e-7)  # float32 sums: a few ulp with the batch's make-up
    src = tmp_path / "rows.csv"
    rows.assign(churn=pred["churn"].to_numpy()).to_csv(src, index=False)           # a file also carries the target: ignored
    r = cli(project, "score", str(src), str(tmp_path / "scored.parquet"), "--chunk-rows", "50")   # 120 rows: three chunks
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"scored {len(rows)} rows of {src} with churn version 1 (onnx path)"), r.stdout
    batch = pd.read_parquet(tmp_path / "scored.parquet")
    assert list(batch.columns) == ["rownames", "probability", "decision"] and batch["rownames"].tolist() == pred["rownames"].tolist()
    np.testing.assert_allclose(http_p, batch["probability"], rtol=0, atol=1e-7)      # the same ONNX path, chunked differently
    np.testing.assert_allclose(http_p, pred["probability"], rtol=0, atol=1e-6)       # ONNX vs sklearn: within the parity tolerance
    assert (batch["decision"] == (pred["decision"])).mean() == 1.0
    rows.to_parquet(tmp_path / "rows.parquet")                                       # Parquet in, a named version
    r = cli(project, "score", str(tmp_path / "rows.parquet"), str(tmp_path / "scored2.parquet"), "--version", "1", "--chunk-rows", "50")
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scored2.parquet"), batch)
    from conftest import store
    runs = store(project).search_runs([store(project).get_experiment_by_name("mlopsnb-churn").experiment_id],
                                      "tags.`mlopsnb.task` = 'score'")
    assert len(runs) == 2 and all(r.data.metrics["rows"] == len(rows) and r.data.params["version"] == "1" for r in runs)
    assert all(0 < r.data.metrics["score_mean"] < 1 for r in runs)


def _new_version(project, tamper: bool = False, onnx: bool = True) -> str:
    "Register the champion's model again as a new version (logged from a new run); optionally tamper with its files or leave out ONNX."
    from mlopsnb.config import Project
    from mlopsnb.registry import MODEL_FILE, load_version, log_model, register
    st = Project.load(project, environ={}).store
    client = st.client()
    model = load_version(st, "churn", "@champion")
    rows, _ = raw_test_rows(project)
    X = rows.drop(columns=["rownames"])
    run = client.create_run(client.get_experiment_by_name("mlopsnb-churn").experiment_id).info.run_id
    from mlopsnb.monitor import REFERENCE_FILE                                   # the same model carries the same reference
    logged = log_model(st, model, X.head(20), run, X_check=X if onnx else None,
                       extra_files={REFERENCE_FILE: project / "products/model/reference.json"})
    from mlopsnb.registry import EVIDENCE_TAG
    evidence = json.loads(client.get_model_version("churn", "1").tags[EVIDENCE_TAG])   # the same model: the same evidence
    version = register(st, logged["model_uri"], "churn", logged["manifest"], tags={EVIDENCE_TAG: evidence}, run_id=run)
    client.set_terminated(run)
    if tamper:
        loc = client.get_model_version_download_uri("churn", version)
        f = Path(loc.removeprefix("file://")) / MODEL_FILE
        data = bytearray(f.read_bytes()); data[len(data) // 2] ^= 1; f.write_bytes(bytes(data))
    return version


def wait_version(server, version: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = httpx.get(server.url + "/version", headers=AUTH).json()
        if v["version"] == version: return v
        time.sleep(0.3)
    raise AssertionError(f"still serving {v['version']}, not {version}")


def test_hot_reload_on_promotion_and_rollback_and_tampered_version_refused(server, project):
    rows, _ = raw_test_rows(project)
    body = records(rows.head(5))
    two = _new_version(project, onnx=False)                                          # no ONNX copy: the sklearn path
    r = cli(project, "promote", "churn", two, "--reason", "test reload", "--force")
    assert r.returncode == 0, r.stderr
    assert wait_version(server, two)["path"] == "sklearn"
    before = predict(server, body).json()
    assert (before["version"], before["path"]) == (two, "sklearn")
    from mlopsnb.config import Project
    from mlopsnb.registry import load_version
    want = load_version(Project.load(project, environ={}).store, "churn", two).predict_proba(rows.head(5).drop(columns=["rownames"]))[:, 1]
    np.testing.assert_allclose([p["probability"] for p in before["predictions"]], want, rtol=0, atol=1e-12)
    assert 'mlopsnb_model_info{name="churn",path="sklearn",role="champion",version="%s"} 1.0' % two in httpx.get(server.url + "/metrics", headers=AUTH).text
    r = cli(project, "rollback", "churn", "--reason", "test rollback")
    assert r.returncode == 0, r.stderr
    wait_version(server, "1")
    three = _new_version(project, tamper=True)
    refused = cli(project, "promote", "churn", three, "--reason", "tampered", "--force")      # mlopsnb never moves an alias to it
    assert refused.returncode == 1 and "model.skops does not match its sha256 manifest" in refused.stderr, refused.stderr
    Project.load(project, environ={}).store.client().set_registered_model_alias("churn", "champion", three)   # moved by hand
    time.sleep(4)                                                                    # several polls
    assert httpx.get(server.url + "/version", headers=AUTH).json()["version"] == "1"  # the old one kept
    assert predict(server, body).status_code == 200
    assert 'mlopsnb_reloads_total{result="refused",role="champion"}' in httpx.get(server.url + "/metrics", headers=AUTH).text
    # a service starting on the tampered champion refuses to start, with one line
    s = Server(project)
    try: code = s.proc.wait(120)
    finally: s.stop()
    err = s.proc.stderr.read()
    assert code == 1 and err.strip().count("\n") == 0, err
    assert err.startswith(f"mlopsnb: error: model churn version {three}: model.skops does not match its sha256 manifest"), err
    assert cli(project, "rollback", "churn", "--reason", "back").returncode == 0      # leave version 1 serving


def logged(db: Path) -> list[tuple]:
    "Open the prediction log as the monitoring side would (SQLite recovers or drops a torn WAL tail here), rotated files first, in time order."
    import sqlite3
    out = []
    for f in sorted(db.parent.glob(f"{db.stem}-*{db.suffix}")) + [db]:
        con = sqlite3.connect(f)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            out += con.execute("SELECT request_id, row, version, features, probability, decision FROM scored ORDER BY seq").fetchall()
        finally: con.close()
    return out


def test_sigterm_drains_the_request_in_flight_logs_every_answered_row_and_warns_off_loopback(project, tmp_path):
    rows, _ = raw_test_rows(project)
    body = json.dumps(records(rows.head(50))).encode()
    db = tmp_path / "predictions.db"
    s = Server(project, "--host", "0.0.0.0", "--log", str(db), "--log-max-mb", "0.05")     # rotated every few requests
    try:
        s.wait()
        answered = {}
        for k in range(20):
            r = predict(s, records(rows.iloc[k: k + 1 + k % 3]))
            assert r.status_code == 200; answered[r.json()["request_id"]] = r.json()["predictions"]
        def slow_body():                      # the request is in flight (half sent) when SIGTERM arrives
            yield body[: len(body) // 2]
            time.sleep(0.3); s.proc.send_signal(signal.SIGTERM); time.sleep(1.5)
            yield body[len(body) // 2:]
        r = httpx.post(s.url + "/predict", content=slow_body(), headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 50
        answered[r.json()["request_id"]] = r.json()["predictions"]
        code = s.proc.wait(30)
        assert code in (0, 128 + signal.SIGTERM), code   # uvicorn drains, re-raises the signal, mlopsnb exits 143 as a shell does
    finally: s.stop()
    log = logged(db)                          # every row answered with 200, the one in flight at SIGTERM included
    assert len(log) == sum(len(p) for p in answered.values())
    for rid, preds in answered.items():
        mine = [r for r in log if r[0] == rid]
        assert [r[1] for r in mine] == list(range(len(preds))) and [r[4] for r in mine] == [p["probability"] for p in preds]
        assert [r[5] for r in mine] == [p["decision"] for p in preds] and all(r[2] == "1" for r in mine)
    assert len(list(tmp_path.glob("predictions-*.db"))) >= 2                 # rotated, and no row lost or doubled across the files
    first = json.loads(log[0][3])
    assert set(first) == set(rows.columns) - {"rownames"}    # the model's inputs; the id dropped (no MLOPSNB_LOG_KEY)
    assert "warning: serving on 0.0.0.0 without a bearer token (set MLOPSNB_TOKEN)" in s.proc.stderr.read()


def test_prediction_log_after_kill_9_holds_only_complete_requests(project, tmp_path):
    import threading
    rows, _ = raw_test_rows(project)
    db = tmp_path / "predictions.db"
    s = Server(project, "--log", str(db))
    done, stop = [], threading.Event()
    def client():
        k = 0
        while not stop.is_set():
            try: r = predict(s, records(rows.iloc[(k % 20) * 5: (k % 20) * 5 + 5]))
            except httpx.TransportError: return
            if r.status_code == 200: done.append(r.json()["request_id"])
            k += 1
    try:
        s.wait()
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads: t.start()
        deadline = time.time() + 60                       # killed mid-stream, once enough requests were answered (slow on a loaded machine)
        while len(done) < 25 and time.time() < deadline: time.sleep(0.2)
        s.proc.send_signal(signal.SIGKILL); s.proc.wait(10)
        stop.set()
        for t in threads: t.join(30)
    finally: s.stop()
    assert len(done) > 20, len(done)
    log = logged(db)
    assert log, "nothing was logged in 3 seconds"
    by_request = {}
    for rid, row, *_ in log: by_request.setdefault(rid, []).append(row)
    assert all(rs == [0, 1, 2, 3, 4] for rs in by_request.values())      # whole requests only
    assert len(set(by_request) - set(done)) <= 3     # answered ones (a request killed between its log and its answer: at most one per client)
    from mlopsnb.serve import PredictionLog                              # the next start appends after the recovered tail
    again = PredictionLog(db)
    from mlopsnb.serve import Scorer
    again.append("after", Scorer("churn", "1", None, [], set(), set(), set()), [{"a": 1}], np.array([0.5]), [1]); again.close()
    assert logged(db)[-1][0] == "after" and len(logged(db)) == len(log) + 1


def test_score_batch_task_of_pipeline_serve_yaml_records_and_follows_the_champion(project):
    import shutil
    from conftest import ROOT, executed, skipped, store
    from mlopsnb.config import Project
    from mlopsnb.registry import get_alias
    shutil.copy(ROOT / "pipeline.serve.yaml", project / "pipeline.serve.yaml")
    champion = get_alias(Project.load(project, environ={}).store, "churn", "champion")
    training_state = (project / "products/.mlopsnb/state.json").read_bytes()
    r = cli(project, "run", "--pipeline", "pipeline.serve.yaml", "--engine", "inprocess")
    assert r.returncode == 0 and executed(r) == ["score_batch", "monitor_drift"], r.stdout + r.stderr
    # monitor_drift compared the batch score_batch scored with the reference of the version that scored it
    monitored = json.loads((project / "products/monitoring/summary.json").read_text())
    assert monitored["version"] == champion and monitored["rows"] == len(pd.read_parquet(project / "products/data/test.parquet")), monitored
    # each spec keeps its own fingerprint: building pipeline.serve.yaml leaves the training build's no-op intact
    assert (project / "products/.mlopsnb/state.json").read_bytes() == training_state
    assert (project / "products/.mlopsnb/state.pipeline.serve.json").is_file()
    noop = cli(project, "run", "--engine", "inprocess", *SAMPLE)
    assert noop.returncode == 0 and noop.stdout.startswith("nothing to do"), noop.stdout + noop.stderr
    scored = pd.read_parquet(project / "products/serving/scored.parquet")
    pred = pd.read_parquet(project / "products/evaluation/predictions.parquet")     # the same held-out rows, scored by evaluate_model
    assert scored["rownames"].tolist() == pred["rownames"].tolist()
    np.testing.assert_allclose(scored["probability"], pred["probability"], rtol=0, atol=1e-6)
    summary = json.loads((project / "products/serving/score_batch.json").read_text())
    assert (summary["rows"], summary["version"], sum(summary["histogram"]["counts"])) == (len(pred), champion, len(pred))
    client = store(project)
    run = client.search_runs([client.get_experiment_by_name("mlopsnb-churn").experiment_id], "tags.`mlopsnb.task` = 'score_batch'")[0]
    assert run.data.tags["mlopsnb.model_version"] == champion and run.data.tags["mlopsnb.pipeline"] == "pipeline.serve.yaml"
    assert run.data.metrics["rows"] == len(pred) and 0 < run.data.metrics["score_mean"] < 1
    new = _new_version(project)                                                  # @champion moves: score_batch is stale
    assert cli(project, "promote", "churn", new, "--reason", "test score_batch", "--force").returncode == 0
    st = cli(project, "status", "--pipeline", "pipeline.serve.yaml")
    assert "input changed: churn@champion" in st.stdout, st.stdout
    third = cli(project, "run", "--pipeline", "pipeline.serve.yaml", "--engine", "inprocess")
    assert third.returncode == 0 and executed(third) == ["score_batch", "monitor_drift"], third.stdout + third.stderr
    assert json.loads((project / "products/serving/score_batch.json").read_text())["version"] == new
    assert cli(project, "rollback", "churn", "--reason", "back").returncode == 0


def test_canary_split_stickiness_shadow_and_a_challenger_appearing_and_moving(project, tmp_path):
    from mlopsnb.config import Project
    from mlopsnb.registry import move_alias
    from mlopsnb.serve import key_position
    st = Project.load(project, environ={}).store
    st.client().delete_registered_model_alias("churn", "challenger")       # no @challenger yet
    rows, _ = raw_test_rows(project)
    recs = records(rows)
    db = tmp_path / "predictions.db"
    s = Server(project, "--canary", "0.3", "--shadow", "--reload-interval", "1", "--log", str(db))
    try:
        s.wait()
        http = httpx.Client(base_url=s.url, timeout=30)
        early = [http.post("/predict", json=recs[k], headers={"x-request-key": f"e{k}"}).json() for k in range(10)]
        assert {(r["version"], r["role"]) for r in early} == {("1", "champion")}     # no challenger: the champion answers all
        assert httpx.get(s.url + "/version").json()["challenger"] is None
        new = _new_version(project)
        move_alias(st, "churn", "challenger", new, "test canary")
        deadline = time.time() + 30
        while (httpx.get(s.url + "/version").json()["challenger"] or {}).get("version") != new:
            assert time.time() < deadline, "the new @challenger was not picked up"; time.sleep(0.3)
        # the split: 400 keyed requests; each goes where its key's position says, and the fraction is binomial(400, 0.3)
        keys = [f"customer-{k}" for k in range(400)]
        answered = {k: http.post("/predict", json=recs[i % len(recs)], headers={"x-request-key": k}).json() for i, k in enumerate(keys)}
        to_challenger = sum(a["role"] == "challenger" for a in answered.values())
        assert abs(to_challenger - 120) <= 4 * (400 * 0.3 * 0.7) ** 0.5, to_challenger        # within 4 sigma (about 37)
        assert all((a["role"], a["version"]) == (("challenger", new) if key_position(k) < 0.3 else ("champion", "1")) for k, a in answered.items())
        # sticky: the same key, the same version; without a header, a one-record request is keyed by its id column
        for k in keys[:20]:
            again = {http.post("/predict", json=recs[0], headers={"x-request-key": k}).json()["version"] for _ in range(3)}
            assert again == {answered[k]["version"]}, k
        by_id = [http.post("/predict", json=recs[5]).json()["version"] for _ in range(10)]
        assert len(set(by_id)) == 1 and by_id[0] == (new if key_position(str(recs[5]["rownames"])) < 0.3 else "1")
        m = httpx.get(s.url + "/metrics").text
        assert f'mlopsnb_requests_total{{role="challenger",status="200",version="{new}"}}' in m
        assert f'mlopsnb_model_info{{name="churn",path="onnx",role="challenger",version="{new}"}} 1.0' in m
        # the challenger moves (here to the champion's version): followed like the champion
        move_alias(st, "churn", "challenger", "1", "test challenger move")
        deadline = time.time() + 30
        while httpx.get(s.url + "/version").json()["challenger"]["version"] != "1":
            assert time.time() < deadline, "the @challenger move was not followed"; time.sleep(0.3)
        http.close()
    finally: s.stop()
    assert "warning: churn has no @challenger: every request goes to @champion" in s.proc.stderr.read()
    import sqlite3
    con = sqlite3.connect(db)
    try:
        scored = con.execute("SELECT request_id, version, role FROM scored").fetchall()
        shadow = con.execute("SELECT request_id, version, probability FROM shadow_scored").fetchall()
        answered_p = dict(con.execute("SELECT request_id, probability FROM scored").fetchall())
    finally: con.close()
    assert len(scored) == 10 + 400 + 60 + 10 and {r[2] for r in scored} == {"champion", "challenger"}
    assert {r[1] for r in scored if r[2] == "challenger"} == {new}
    champion_answered = {r[0] for r in scored if r[2] == "champion"}
    # shadow: every champion-answered request scored by the challenger of the time (none before it existed), never a challenger-answered one
    assert {r[0] for r in shadow} <= champion_answered and len(shadow) >= len(champion_answered) - 10 - 5   # early ones, and a few racing the last move
    assert all(abs(p - answered_p[rid]) < 1e-6 for rid, _, p in shadow)                   # the same model registered twice
    assert {r[1] for r in shadow} <= {new, "1"} and new in {r[1] for r in shadow}


def _peak_rss_mb(project, *args: str) -> float:
    "Run `mlopsnb ARGS` in a child process of a small wrapper; return the child's peak RSS (MB) from getrusage."
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "assert r.returncode == 0, r.stderr; sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([str(BIN / "python"), "-c", code, str(BIN / "mlopsnb"), *args], cwd=project, capture_output=True, text=True, env=clean_env())
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1]) / 1024, r.stderr


def test_score_memory_stays_bounded_by_the_chunk_on_a_file_many_chunks_long(project, tmp_path):
    rows, _ = raw_test_rows(project)
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    rows.to_csv(small, index=False)                                                  # 120 rows: one chunk
    reps = 40_000 // len(rows) + 1
    pd.concat([rows] * reps, ignore_index=True).to_csv(big, index=False)            # 40,080 rows: 41 chunks of 1,000
    one, _ = _peak_rss_mb(project, "score", str(small), str(tmp_path / "s.parquet"), "--chunk-rows", "1000")
    many, progress = _peak_rss_mb(project, "score", str(big), str(tmp_path / "b.parquet"), "--chunk-rows", "1000")
    whole, _ = _peak_rss_mb(project, "score", str(big), str(tmp_path / "w.parquet"), "--chunk-rows", "200000")   # the file in one chunk
    assert len(pd.read_parquet(tmp_path / "b.parquet")) == len(rows) * reps
    print(f"peak RSS: one chunk {one:.0f} MB, 41 chunks {many:.0f} MB, the big file as one chunk {whole:.0f} MB")
    assert many - one < 40, (one, many)                     # bounded by the chunk, not the file...
    assert whole - one > 3 * max(many - one, 10), (one, many, whole)   # ...which the measure would see: the whole file costs far more
    assert progress.strip().splitlines()[-1].startswith(f"scoring {big}: {len(rows) * reps:,} rows"), progress   # plain lines off a terminal
