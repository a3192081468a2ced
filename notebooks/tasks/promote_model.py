# %% [markdown]
# # promote_model
# Register the trained model with its evidence (test metrics, fairness gap, data contract result,
# latency), make it `@challenger`, and move `@champion` to it only when every gate of the policy
# passes. The decision, gate by gate, is recorded on the model version, in the audit history
# (`mlopsnb history <model>`) and in this notebook.

# %% tags=["parameters"]
upstream = ["validate_data", "split_data", "train_model", "evaluate_model"]
product = None
model_name = None  # registered model name
target = None      # the target column
ids = None         # identifier columns, never features
policy = None      # the promotion gates (mlopsnb.config.PromotionPolicy), declared in pipeline.yaml

# %%
import json
import pandas as pd
from mlopsnb.config import PromotionPolicy
from mlopsnb.data import read_frame, write_json
from mlopsnb.promotion import EVIDENCE_TAG, latency_ms, move_alias, promote
from mlopsnb.registry import get_alias, load_model, register
from mlopsnb.tracking import current_run_id, log_dict, log_metrics, set_tags

# %%
rules = PromotionPolicy.model_validate(policy)
info = json.loads(open(upstream["train_model"]["info"]).read())
evaluation = json.loads(open(upstream["evaluate_model"]["metrics"]).read())
validation = json.loads(open(upstream["validate_data"]["report"]).read())
test = read_frame(upstream["split_data"]["test"])
evidence = {"metrics": evaluation["metrics"], "fairness_max_gap": evaluation.get("fairness_max_gap"),
            "contract_violations": len(validation["violations"]), "test_rows": evaluation["rows"]}
if rules.max_latency_ms is not None:
    model = load_model(upstream["train_model"]["model"])
    evidence["latency_ms"] = latency_ms(model, test.drop(columns=[target, *ids]))
champion = evaluation.get("champion")   # the champion scored by evaluate_model on this same test set
pd.Series({k: v for k, v in evidence.items() if k != "metrics"}, dtype=object)

# %%
run_id = current_run_id()
version = register(info["model_uri"], model_name, info["manifest"],
                   tags={EVIDENCE_TAG: evidence, "mlopsnb.run_id": run_id, "mlopsnb.candidate": info["candidate"]})
move_alias(model_name, "challenger", version, "newest candidate", action="challenger", run_id=run_id)
decision = promote(model_name, version, rules, reason="promote_model", evidence=evidence, champion=champion,
                   run_id=run_id, action="promote")
pd.DataFrame(decision["gates"], columns=["gate", "value", "threshold", "passed", "rule"])

# %%
aliases = [a for a in ("challenger", "champion") if get_alias(model_name, a) == version]
write_json(decision, product["decision"])
log_dict(decision, "promotion_decision.json")
set_tags({"mlopsnb.model_name": model_name, "mlopsnb.model_version": version, "mlopsnb.model_aliases": ",".join(aliases),
          "mlopsnb.model_decision": ("promoted: " if decision["promoted"] else "held: ") + decision["reason"]})
log_metrics(promoted=int(decision["promoted"]), gates_failed=sum(not g["passed"] for g in decision["gates"]))
print(f"{model_name} version {version} @{' @'.join(aliases)}: {'PROMOTED to @champion' if decision['promoted'] else 'held'} ({decision['reason']})")
