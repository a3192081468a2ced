# %% [markdown]
# # train_model
# Fit every candidate of the grid (model families x hyperparameters) on the training set, choose
# the best on the validation set, and log it to MLflow as a pickle-free (skops) sklearn Pipeline
# with its features inside, a signature and an input example, and what serving needs to use it:
# the decision threshold, the id columns and the data contract it was trained under.

# %% tags=["parameters"]
upstream = ["split_data", "validate_data"]
product = None
target = None  # the target column
ids = None     # identifier columns, never features
threshold: float = None  # the decision threshold the model carries (serving, scoring, monitoring use the version's own)
metric = None  # selection metric on the validation set (higher is better)
seed = None    # random state of every estimator
grid: list[dict] = None  # list of {family: ..., hyperparameter: [values]}
drop: list[str] = None   # columns the model drops first (data.drop)

# %%
import json
from pathlib import Path

import numpy as np
from mlopsnb.data import log_table, read_contract, read_frame, write_json
from mlopsnb.evaluate import classification_metrics
from mlopsnb.monitor.reference import REFERENCE_FILE, reference_profile
from mlopsnb.registry.gates import TRAINING_ROWS_FILE, row_keys
from mlopsnb.registry.versions import log_model
from mlopsnb.serve import SERVING_FILE, serving_info
from mlopsnb.tracking import current_run_id, log_artifact, log_metrics, log_params, task_store
from mlopsnb.train import fit_grid

# %%
train, val = read_frame(upstream["split_data"]["train"]), read_frame(upstream["split_data"]["val"])
log_table(train, "train", upstream["split_data"]["train"], "training")
log_table(val, "val", upstream["split_data"]["val"], "validation")
X_train, y_train = train.drop(columns=[target, *ids]), train[target]
X_val, y_val = val.drop(columns=[target, *ids]), val[target]
model, candidates = fit_grid(grid, X_train, y_train, X_val, y_val, metric=metric, seed=seed, drop=drop)
candidates

# %%
best = candidates.iloc[0]
candidates.to_csv(product["candidates"], index=False)
log_artifact(product["candidates"])
log_params(best_candidate=best["candidate"], best_family=best["family"], candidates=len(candidates))
log_metrics({f"val_{metric}": float(best[metric]), "candidates": len(candidates)})
# the rows the model saw (training and selection), shipped inside the model so a later build compares it only on others
np.save(product["rows"], np.concatenate([row_keys(train, ids), row_keys(val, ids)]), allow_pickle=False)
# the reference monitoring compares new data with: training features (ids, target, dropped columns excluded) and the
# model's scores on the held-out test rows (never used to fit or select), shipped inside the model under its manifest
test = read_frame(upstream["split_data"]["test"])
held_out = model.predict_proba(test.drop(columns=[target, *ids]))[:, 1]
write_json(reference_profile(X_train.drop(columns=[c for c in drop or [] if c in X_train.columns]), held_out, test[target],
                             classification_metrics(test[target], held_out)), product["reference"])
# what serving needs, shipped inside the model so each version carries its own: the threshold, the ids, the data
# contract validate_data checked (its `pii` marks say what the prediction log may keep of each column)
contract_file = json.loads(Path(upstream["validate_data"]["report"]).read_text())["contract"]
write_json(serving_info(threshold, ids, read_contract(contract_file), "the training build's train_model.threshold",
                        Path(contract_file).name), product["serving"])
# hashed, then uploaded as is: the model that is evaluated, timed and registered is these bytes; its signature and
# input example are synthetic rows typed like X_train (medians, frequent categories, placeholders), none of its rows
shipped = {TRAINING_ROWS_FILE: product["rows"], REFERENCE_FILE: product["reference"], SERVING_FILE: product["serving"]}
logged = log_model(task_store(), model, X_train, current_run_id(), extra_files=shipped,
                   local_copy=product["model"], X_check=X_val)   # X_val: the ONNX copy's parity check
write_json({**logged, "candidate": best["candidate"], f"val_{metric}": float(best[metric]),
            "features": list(X_train.columns)}, product["info"])
print(f"best: {best['candidate']} (validation {metric} {best[metric]:.4f}); logged as {logged['model_uri']}")
