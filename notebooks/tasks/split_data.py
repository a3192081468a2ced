# %% [markdown]
# # split_data
# Seeded, stratified train/validation/test split, and a profile of the training features (ids and
# target excluded) for a look at this build's data. What monitoring compares with is the profile
# `train_model` ships inside the model (`mlopsnb/reference.json`), which a later held build cannot overwrite.

# %% tags=["parameters"]
upstream = ["get_data", "validate_data"]
product = None
target = None     # the target column
ids = None        # identifier columns: split with their rows, never profiled
test_size = None  # fraction held out for the final evaluation
val_size = None   # fraction used to choose between candidates
seed = None       # split seed

# %%
from mlopsnb.data import log_table, read_frame, split_frame, write_frame, write_json
from mlopsnb.monitor.reference import reference_profile
from mlopsnb.tracking import log_metrics

# %%
df = read_frame(upstream["get_data"]["data"])
log_table(df, "raw", upstream["get_data"]["data"], "splitting")
parts = split_frame(df, target, test_size=test_size, val_size=val_size, seed=seed)
for name, part in parts.items(): write_frame(part, product[name])
write_json(reference_profile(parts["train"].drop(columns=[target, *ids])), product["profile"])
log_metrics({f"{k}_rows": len(v) for k, v in parts.items()} | {f"{k}_positive_rate": float(v[target].mean()) for k, v in parts.items()})

# %%
import pandas as pd
pd.DataFrame({k: {"rows": len(v), "positive rate": round(v[target].mean(), 4)} for k, v in parts.items()})
