# %% [markdown]
# # select_model
# Pick the best branch (one model family's `train_model` and `evaluate_model`) by the validation
# metric `train_model` selected its candidates with, never by the test set, which stays the final
# estimate promotion compares with the champion. Record every branch side by side and the winner,
# and copy the winner's model and evaluation where promotion, serving and monitoring read them.

# %% tags=["parameters"]
upstream = ["train_model", "evaluate_model"]
product = None
metric = None  # train_model's validation metric (higher is better)

# %%
import json
from pathlib import Path

import pandas as pd
from mlopsnb.branches import branch_products, copy_products, select_branch
from mlopsnb.data import write_json
from mlopsnb.tracking import log_artifact, log_metrics, log_params

# %%
trained, evaluated = branch_products(upstream, "train_model"), branch_products(upstream, "evaluate_model")
infos = {b: json.loads(Path(p["info"]).read_text()) for b, p in trained.items()}
evaluations = {b: json.loads(Path(p["metrics"]).read_text()) for b, p in evaluated.items()}
best, rows = select_branch(infos, metric, evaluations)
pd.DataFrame(rows).set_index("branch").round(4)

# %%
won, ev = trained[best], evaluated[best]
copy_products([(won[k], product[k]) for k in ("model", "rows", "candidates", "info", "reference")]
              + [(ev[k], product[k]) for k in ("metrics", "predictions", "report")]
              + [(p, Path(product["metrics"]).parent / p.name) for p in Path(ev["metrics"]).parent.glob("*.csv")])   # the report's tables
write_json({"metric": f"val_{metric}", "selected": best, "branches": rows}, product["selection"])
log_artifact(product["selection"])
log_params(selected_branch=best, selected_candidate=infos[best]["candidate"], branches=len(rows))
log_metrics({f"val_{metric}_{r['branch']}": r[f"val_{metric}"] for r in rows} | {f"val_{metric}": infos[best][f"val_{metric}"]})
chosen = evaluations[best]   # the selected branch's test metrics, recorded here too: what the build summary and promotion report
log_metrics({**{k: v for k, v in chosen["metrics"].items() if isinstance(v, (int, float))}, "fairness_max_gap": chosen["fairness_max_gap"]})
print(f"selected: {best} ({infos[best]['candidate']}, validation {metric} {infos[best][f'val_{metric}']:.4f}) "
      f"of {len(rows)} branches")
