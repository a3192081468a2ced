# %% [markdown]
# # split_data
# Seeded, stratified train/validation/test split, and the reference profile of the training data
# that drift monitoring compares new data with.

# %% tags=["parameters"]
upstream = ["get_data", "validate_data"]
product = None
target = None     # the target column
test_size = None  # fraction held out for the final evaluation
val_size = None   # fraction used to choose between candidates
seed = None       # split seed

# %%
from mlopsnb.data import profile_frame, read_frame, split_frame, write_frame, write_json
from mlopsnb.tracking import log_metrics

# %%
df = read_frame(upstream["get_data"]["data"])
parts = split_frame(df, target, test_size=test_size, val_size=val_size, seed=seed)
for name, part in parts.items(): write_frame(part, product[name])
write_json(profile_frame(parts["train"]), product["profile"])
log_metrics({f"{k}_rows": len(v) for k, v in parts.items()} | {f"{k}_positive_rate": float(v[target].mean()) for k, v in parts.items()})

# %%
import pandas as pd
pd.DataFrame({k: {"rows": len(v), "positive rate": round(v[target].mean(), 4)} for k, v in parts.items()})
