# %% [markdown]
# # evaluate_model
# Score the chosen model on the held-out test set: ROC AUC, PR AUC, F1, log loss, Brier score.

# %% tags=["parameters"]
upstream = ["split_data", "train_model"]
product = None
target = None     # the target column
ids = None        # identifier columns, never features
threshold = None  # decision threshold for F1, precision and recall

# %%
from mlopsnb.data import read_frame, write_json
from mlopsnb.evaluate import classification_metrics, metrics_table
from mlopsnb.registry import load_model
from mlopsnb.tracking import log_metrics

# %%
test = read_frame(upstream["split_data"]["test"])
model = load_model(upstream["train_model"]["model"])
proba = model.predict_proba(test.drop(columns=[target, *ids]))[:, 1]
metrics = classification_metrics(test[target], proba, threshold=threshold)
log_metrics(metrics)
write_json({"threshold": threshold, "rows": len(test), "metrics": metrics}, product["metrics"])
metrics_table({"model": metrics}).round(4)
