# %% [markdown]
# # evaluate_model
# Score the new model (the challenger) and the current `@champion`, side by side on the same
# held-out test set: quality (ROC AUC, PR AUC, F1, log loss, Brier score, calibration), business
# value (expected value per customer from the value matrix, and the threshold that maximises it),
# fairness (selection rate, TPR and FPR per group of each sensitive attribute) and explanation
# (permutation importance). Everything goes into one HTML report, logged with the tables behind
# its figures to this task's MLflow run.

# %% tags=["parameters"]
upstream = ["split_data", "train_model"]
product = None
target = None        # the target column
ids = None           # identifier columns, never features
threshold = None     # decision threshold for F1, precision, recall, value and fairness
model_name = None    # registered model name: its @champion is evaluated alongside
sensitive = None     # sensitive attributes: one fairness slice per column
value_matrix = None  # value per customer of each outcome: {tp, fp, fn, tn}
n_repeats = None     # permutation-importance shuffles per column (0 skips)
fairness = None      # grouping of sensitive attributes (mlopsnb.config.FairnessConfig): bins, quantiles, min_group_size
positive_label = None  # what the report calls the positive class

# %%
from pathlib import Path

from mlopsnb.core import atomic_write_text
from mlopsnb.data import read_frame, write_json
from mlopsnb.evaluate import evaluate, evaluation_summary, evaluation_tables, metrics_table, run_metrics
from mlopsnb.registry import get_alias, load_model, load_version
from mlopsnb.report import evaluation_report
from mlopsnb.tracking import log_artifact, log_metrics

# %% [markdown]
# ## The challenger and the champion, on the same test rows

# %%
test = read_frame(upstream["split_data"]["test"])
X, y, groups = test.drop(columns=[target, *ids]), test[target], test[list(sensitive or [])]
models = {"challenger": load_model(upstream["train_model"]["model"])}
champion_version = get_alias(model_name, "champion")
if champion_version: models["champion"] = load_version(model_name, champion_version)
results = {name: evaluate(m, X, y, groups, threshold=threshold, matrix=value_matrix, n_repeats=n_repeats, fairness=fairness)
           for name, m in models.items()}
print(f"{len(test)} test rows; champion: {f'{model_name} version {champion_version}' if champion_version else 'none yet'}")
metrics_table({name: {**r["metrics"], "fairness_max_gap": r["fairness_max_gap"]} for name, r in results.items()}).round(4)

# %% [markdown]
# ## Fairness: per-group rates at the decision threshold

# %%
tables = evaluation_tables(results)
tables["fairness"].round(3)

# %% [markdown]
# ## Explanation: the columns the challenger leans on most

# %%
results["challenger"]["importance"].head(10).round(4)

# %% [markdown]
# ## Record: metrics, tables, report

# %%
metrics = run_metrics(results["challenger"])
log_metrics(metrics)
if champion_version: log_metrics(run_metrics(results["champion"], prefix="champion_"))
folder = Path(product["metrics"]).parent
for name, table in tables.items():
    atomic_write_text(folder / f"{name}.csv", table.to_csv(index=False))
    log_artifact(folder / f"{name}.csv", "evaluation/tables")
atomic_write_text(product["report"], evaluation_report(
    results, title=f"Evaluation: {model_name}", positive_label=positive_label,
    subtitle=f"challenger: the newly trained model; champion: {f'{model_name} version {champion_version}' if champion_version else 'none yet'}"))
log_artifact(product["report"], "evaluation")
summary = {"threshold": float(threshold), "rows": len(test), **evaluation_summary(results["challenger"]),
           "champion": {"version": champion_version, **evaluation_summary(results["champion"])} if champion_version else None}
write_json(summary, product["metrics"])
log_artifact(product["metrics"], "evaluation")
m = results["challenger"]["metrics"]
print(f"value per customer at threshold {threshold}: {m['value_per_customer']:.2f}; "
      f"best {m['value_at_best_threshold']:.2f} at threshold {m['best_threshold']:.2f}; "
      f"largest fairness gap {results['challenger']['fairness_max_gap']:.3f}; report: {product['report']}")
