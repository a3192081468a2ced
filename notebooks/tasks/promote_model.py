# %% [markdown]
# # promote_model
# Register the trained model as a new version, make it `@challenger`, and move `@champion` to it
# only when it beats the current champion on the primary metric, both scored on the same test set.

# %% tags=["parameters"]
upstream = ["split_data", "train_model", "evaluate_model"]
product = None
model_name = None  # registered model name
target = None      # the target column
ids = None         # identifier columns, never features
primary = None     # the metric the challenger must win on (higher is better)
min_delta = None   # by how much it must win

# %%
import json
from mlopsnb.data import read_frame, write_json
from mlopsnb.evaluate import classification_metrics, metrics_table
from mlopsnb.registry import decide, get_alias, load_version, register, set_alias
from mlopsnb.tracking import current_run_id, log_metrics, set_tags

# %%
info = json.loads(open(upstream["train_model"]["info"]).read())
challenger = json.loads(open(upstream["evaluate_model"]["metrics"]).read())
test = read_frame(upstream["split_data"]["test"])
champion_version = get_alias(model_name, "champion")
champion = None
if champion_version:
    champ_model = load_version(model_name, champion_version)
    champion = classification_metrics(test[target], champ_model.predict_proba(test.drop(columns=[target, *ids]))[:, 1],
                                      threshold=challenger["threshold"])
metrics_table({"challenger": challenger["metrics"], **({f"champion v{champion_version}": champion} if champion else {})}).round(4)

# %%
promote, reason = decide(challenger["metrics"], champion, primary=primary, min_delta=min_delta)
version = register(info["model_uri"], model_name, tags={"mlopsnb.run_id": current_run_id(), "mlopsnb.candidate": info["candidate"],
                                                        primary: challenger["metrics"][primary]})
set_alias(model_name, "challenger", version)
if promote: set_alias(model_name, "champion", version)
aliases = ["challenger"] + (["champion"] if promote else [])
decision = {"model": model_name, "version": version, "promoted": promote, "reason": reason,
            "previous_champion": champion_version, "aliases": aliases}
write_json(decision, product["decision"])
set_tags({"mlopsnb.model_name": model_name, "mlopsnb.model_version": version, "mlopsnb.model_aliases": ",".join(aliases),
          "mlopsnb.model_decision": reason})
log_metrics(promoted=int(promote))
print(f"{model_name} version {version}: {'PROMOTED to @champion' if promote else 'kept as @challenger'}: {reason}")
