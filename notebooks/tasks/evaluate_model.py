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
threshold: float = None  # decision threshold for F1, precision, recall, value and fairness
model_name = None    # registered model name: its @champion is evaluated alongside
sensitive = None     # sensitive attributes: one fairness slice per column
value_matrix: dict[str, float] = None  # value of each outcome per case: {tp, fp, fn, tn}
n_repeats: int = None                  # permutation-importance shuffles per column (0 skips)
fairness: "FairnessConfig" = None       # grouping of sensitive attributes: bins, quantiles, min_group_size
positive_label: str = None             # what the report calls the positive class

# %%
import json
from pathlib import Path

from mlopsnb.config import FairnessConfig
from mlopsnb.core import atomic_write_text
from mlopsnb.data import log_table, read_frame, write_frame, write_json
from mlopsnb.evaluate import evaluate, evaluation_summary, evaluation_tables, metrics_table, run_metrics
from mlopsnb.registry.gates import champion_on_same_rows, row_keys
from mlopsnb.registry.versions import load_logged
from mlopsnb.report import evaluation_report
from mlopsnb.tracking import log_artifact, log_metrics, task_store

# %% [markdown]
# ## The challenger and the champion, like with like
#
# The challenger is the model exactly as logged by `train_model` (downloaded and checked against
# the manifest taken before upload). The champion is compared on the test rows it was not trained
# on, and only if it takes the same input columns.

# %%
store, fairness = task_store(), FairnessConfig.model_validate(fairness or {})
info = json.loads(Path(upstream["train_model"]["info"]).read_text())
test = read_frame(upstream["split_data"]["test"])
log_table(test, "test", upstream["split_data"]["test"], "evaluation")
X, y, groups = test.drop(columns=[target, *ids]), test[target], test[list(sensitive or [])]
challenger = load_logged(store, info["model_uri"], info["manifest"])
results = {"challenger": evaluate(challenger, X, y, groups, threshold=threshold, matrix=value_matrix, n_repeats=n_repeats, fairness=fairness)}
champ = champion_on_same_rows(store, model_name, X, row_keys(test, ids))
same_rows = None
if champ and champ["model"] is not None:
    m = champ["mask"]
    results["champion"] = evaluate(champ["model"], X[m], y[m], groups[m], threshold=threshold, matrix=value_matrix,
                                   n_repeats=n_repeats, fairness=fairness)
    same_rows = results["challenger"] if m.all() else evaluate(challenger, X[m], y[m], groups[m], threshold=threshold,
                                                                         matrix=value_matrix, n_repeats=0, fairness=fairness)
print(f"{len(test)} test rows; champion: " + (f"{model_name} version {champ['version']}" if champ else "none yet")
      + (f" (not compared: {champ['incomparable']})" if champ and champ["incomparable"] else "")
      + (f" (compared on {int(champ['mask'].sum())} rows it never saw)" if champ and champ["mask"] is not None and not champ["mask"].all() else ""))
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
# ## Record: metrics, tables, predictions, report

# %%
metrics = run_metrics(results["challenger"])
log_metrics(metrics)
if "champion" in results: log_metrics(run_metrics(results["champion"], prefix="champion_"))
folder = Path(product["metrics"]).parent
for name, table in tables.items():
    atomic_write_text(folder / f"{name}.csv", table.to_csv(index=False))
    log_artifact(folder / f"{name}.csv", "evaluation/tables")
proba = challenger.predict_proba(X)[:, 1]
write_frame(test[list(ids)].assign(**{target: y, "probability": proba, "decision": (proba >= threshold).astype(int)}), product["predictions"])
log_artifact(product["predictions"], "evaluation")
champion_name = f"{model_name} version {champ['version']}" if champ else "none yet"
atomic_write_text(product["report"], evaluation_report(
    results, title=f"Evaluation: {model_name}", positive_label=positive_label,
    subtitle=f"challenger: the newly trained model; champion: {champion_name}"))
log_artifact(product["report"], "evaluation")
champion = None
if champ:
    champion = {"version": champ["version"], "incomparable": champ["incomparable"], "excluded_rows": champ["excluded_rows"]}
    if "champion" in results:
        champion |= {**evaluation_summary(results["champion"]), "rows": results["champion"]["rows"],
                     "challenger_metrics": evaluation_summary(same_rows)["metrics"]}
summary = {"threshold": float(threshold), "rows": len(test), **evaluation_summary(results["challenger"]), "champion": champion}
write_json(summary, product["metrics"])
log_artifact(product["metrics"], "evaluation")
m = results["challenger"]["metrics"]
print(f"value per customer at threshold {threshold}: {m['value_per_customer']:.2f}; "
      f"best {m['value_at_best_threshold']:.2f} at threshold {m['best_threshold']:.2f}; "
      f"largest fairness gap {results['challenger']['fairness_max_gap']:.3f}; report: {product['report']}")
