# %% [markdown]
# # promote_model
# Register the selected model (`select_model`) with its evidence (test metrics, fairness gap, data contract result,
# latency), make it `@challenger`, and move `@champion` to it only when every gate of the policy
# passes (with `require_approval: true`, it awaits `mlopsnb approve`). The decision, gate by gate, is recorded on the model version, in the audit history
# (`mlopsnb history <model>`) and in this notebook.

# %% tags=["parameters"]
upstream = ["validate_data", "split_data", "select_model"]
product = None
model_name = None  # registered model name
target = None      # the target column
ids = None         # identifier columns, never features
policy: "PromotionPolicy" = None  # the promotion gates, declared in pipeline.yaml and validated before any task runs
card: "ModelCardConfig" = None    # what the model card declares: owner, intended use, out of scope, limitations

# %%
import json
import pandas as pd
from pathlib import Path
from mlopsnb.config import ModelCardConfig, PromotionPolicy
from mlopsnb.core import atomic_write_text
from mlopsnb.data import log_table, read_frame, snapshot_tags, write_json
from mlopsnb.registry.card import card_html, log_model_card, model_card
from mlopsnb.registry.gates import latency_ms, row_keys
from mlopsnb.registry.promotion import model_digest, promote_candidate
from mlopsnb.registry.provenance import build_of, lineage
from mlopsnb.registry.versions import get_alias, load_logged
from mlopsnb.tracking import current_run_id, log_dict, log_metrics, recorded_tags, set_tags, task_store

# %%
store, rules = task_store(), PromotionPolicy.model_validate(policy)
info = json.loads(open(upstream["select_model"]["info"]).read())          # the selected branch's model
evaluation = json.loads(open(upstream["select_model"]["metrics"]).read())   # and its evaluation
validation = json.loads(open(upstream["validate_data"]["report"]).read())
evidence = {"metrics": evaluation["metrics"], "fairness_max_gap": evaluation.get("fairness_max_gap"),
            "contract_violations": len(validation["violations"]), "contract_warnings": len(validation.get("warnings", [])),
            "test_rows": evaluation["rows"], "inputs": info["features"],
            "git_dirty": {"true": True, "false": False}.get(recorded_tags().get("git.dirty"))}   # as the build recorded it
model = load_logged(store, info["model_uri"], info["manifest"])      # the model exactly as logged (and registered below)
test = read_frame(upstream["split_data"]["test"])
log_table(test, "test", upstream["split_data"]["test"], "evaluation")
X = test.drop(columns=[target, *ids])
digest = model_digest(model, X, row_keys(test, ids), info["manifest"])   # the same model as a registered version: not registered again
if rules.max_latency_ms is not None:
    timing = latency_ms(model, X)
    evidence |= {"latency_ms": timing["median_ms"], "latency": timing}
pd.Series({k: v for k, v in evidence.items() if k not in {"metrics", "inputs"}}, dtype=object)

# %%
# registers, moves @challenger, and @champion only if every gate passes; run by hand in a notebook it only evaluates the gates
decision = promote_candidate(store, model_name, info, rules, evidence, champion=evaluation.get("champion"),
                             run_id=current_run_id(), reason="promote_model",
                             tags={"mlopsnb.candidate": info["candidate"], **snapshot_tags()},
                             digest=digest)
pd.DataFrame(decision["gates"], columns=["gate", "value", "threshold", "passed", "rule"])

# %%
version = decision["version"]
aliases = [a for a in ("challenger", "champion") if version and get_alias(store, model_name, a) == version]
write_json(decision, product["decision"])
log_dict(decision, "promotion_decision.json")
if version:
    said = ("" if decision.get("unchanged") else "promoted: " if decision["promoted"] else
            "awaiting approval: " if decision.get("awaiting_approval") else "held: ")
    set_tags({"mlopsnb.model_name": model_name, "mlopsnb.model_version": version, "mlopsnb.model_aliases": ",".join(aliases),
              "mlopsnb.model_decision": said + decision["reason"], "mlopsnb.model_digest": digest})
log_metrics(promoted=int(decision["promoted"]), gates_failed=sum(not g["passed"] for g in decision["gates"]))
outcome = ("nothing registered" if decision.get("unchanged") else "PROMOTED to @champion" if decision["promoted"] else
           f"AWAITING APPROVAL (mlopsnb approve {model_name}/{version} --note ...)" if decision.get("awaiting_approval") else "held")
print(f"{model_name} version {version} @{' @'.join(aliases)}: {outcome} ({decision['reason']})" if version else decision["reason"])

# %% [markdown]
# ## The model card
# Generated from what the build recorded (lineage, evaluation, contract check) and what `card`
# declares; logged with the version (`mlopsnb show <model> --card`), HTML beside the evaluation report.

# %%
import pandas as pd
run_id = current_run_id()
facts = lineage(store, model_name, version, verify=False) if version else {"model": model_name, "version": None,
                                                                           "build": build_of(store, run_id) if run_id else None}
tables_dir = Path(upstream["select_model"]["metrics"]).parent
tables = {p.stem: pd.read_csv(p) for p in tables_dir.glob("*.csv")}
md = model_card(facts, ModelCardConfig.model_validate(card or {}), evaluation, tables,
                {"path": Path(validation["contract"]).name, "violations": len(validation["violations"]), "warnings": len(validation.get("warnings", []))})
atomic_write_text(product["card"], md)
atomic_write_text(product["card_html"], card_html(md, f"Model card: {model_name} version {version}"))
registered = None if decision.get("unchanged") else version         # an unchanged model keeps the card it was registered with
logged_as = log_model_card(store, model_name, registered, run_id, product["card"], product["card_html"])
print(f"model card: {product['card']} (logged as {logged_as})")
