# %% [markdown]
# # monitor_drift
# Compare the current data (a file of raw records, or the prediction log's window) with the
# reference the model version carries: drift per feature and of the scores, the performance
# estimate (and decay when labels come with the data), A/B across versions. Writes the JSON summary
# and the HTML report, records a run in the monitoring experiment, and alerts (webhook) on drift.

# %% tags=["parameters"]
upstream = ["score_batch"]   # monitors the batch score_batch scored
product = None
model_name = None    # registered model name
version = None       # version number or @alias compared with (null: the one score_batch used, else @champion)
current = None       # a CSV/Parquet file of raw records (null: the file score_batch scored, else the prediction log's window)
log = None           # the prediction log (SQLite) when `current` is null
label_column = None  # a label column of the current data, when it has one
ids = None           # identifier columns
positive = None      # the target's positive label
settings: "MonitorConfig" = None  # thresholds, window, webhook, retrain_on (mlopsnb.config.MonitorConfig)

# %%
import json
import os
import time
from pathlib import Path

import pandas as pd
from mlopsnb.config import Project
from mlopsnb.core import atomic_write_text
from mlopsnb.data import write_json
from mlopsnb.config import MonitorConfig
from mlopsnb.monitor import (monitor, post_webhook, record_monitoring, report_html, report_lines, retrain_line,
                             spec_policy, summary_json, webhook_line)
from mlopsnb.tracking import log_artifact, log_metrics, set_tags, task_root, task_store

# %%
cfg = MonitorConfig.model_validate(settings or {})
batch = json.loads(Path(upstream["score_batch"]["summary"]).read_text()) if isinstance(upstream, dict) and "score_batch" in upstream else None
if batch and current is None: current = batch["input"]          # the batch just scored
if batch and version is None: version = batch["version"]        # with the version that scored it
project = Project.load(task_root())
root = project.root
now = time.time()
summary = monitor(task_store(), model_name, version, current=root / current if current else None, log=None if current else root / log,
                  since=None if current else now - 3600 * cfg.window_hours, until=None if current else now,
                  label_column=label_column, ids=list(ids or []), positive=positive, cfg=cfg,
                  policy=spec_policy(project), threshold=cfg.threshold,   # null: the version's own
                  threshold_source="the monitor settings' threshold", fallback=project.spec.threshold(project.params),
                  log_key=os.environ.get("MLOPSNB_LOG_KEY") or None)
print("\n".join(report_lines(summary)))      # the lines `mlopsnb monitor` prints
pd.DataFrame({c: {k: r.get(k) for k in ("status", "psi", "ks", "cramers_v", "missing_change", "new_share")}
              for c, r in summary["features"].items()}).T.sort_values("status")

# %%
if cfg.webhook and summary["status"] != "ok":
    summary["webhook"] = post_webhook(cfg.webhook, summary_json(summary), cfg.webhook_retries, cfg.webhook_backoff_s, cfg.webhook_timeout_s)
    print(webhook_line(summary["webhook"]))
if cfg.retrain_on == "drift" and summary["status"] == "drift":
    # a build cannot start another build of the same project (one build at a time): recorded, run `mlopsnb monitor --retrain`
    summary["retrain"] = {"triggered": False, "reason": "drift inside a pipeline build: run `mlopsnb monitor --retrain` to retrain"}
    print(f"retrain: {retrain_line(summary['retrain'])}")
write_json(summary_json(summary), product["summary"])
atomic_write_text(product["report"], report_html(summary))
log_artifact(product["summary"], "monitoring"); log_artifact(product["report"], "monitoring")
record_monitoring(task_store(), cfg.experiment or f"{project.experiment}-monitoring", summary, product["report"], project.artifact_location)
set_tags({"mlopsnb.model_name": model_name, "mlopsnb.model_version": summary["version"], "mlopsnb.monitor_status": summary["status"]})
log_metrics(rows=summary["rows"], drifted_features=len(summary["drifted"]))
