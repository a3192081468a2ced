# %% [markdown]
# # get_data
# Load the data source named in env.yaml (`data`) into the modelling table: the source's raw
# values (the model itself drops and converts columns), the target encoded 0/1 from its positive label.
# It shows the table's schema and summary statistics, never its rows.

# %% tags=["parameters"]
upstream = None
product = None
data: "DataConfig" = None  # the `data` section of env.yaml: source, target, positive label, ids, ...
sample = None  # rows to keep (stratified) for a quick run; None keeps all
seed = None    # sampling seed

# %%
from mlopsnb.config import DataConfig
from mlopsnb.data import frame_digest, load_data, log_source, read_source, table_summary, write_frame
from mlopsnb.tracking import log_metrics, set_tags, task_root

# %%
cfg = DataConfig.model_validate(data)
raw = read_source(cfg, task_root())
snapshot = log_source(raw, cfg)   # the dataset input of this run; the snapshot with data.snapshot: true
df = load_data(cfg, task_root(), sample=sample, seed=seed, raw=raw)
digest = frame_digest(df)
write_frame(df, product["data"])
set_tags({"mlopsnb.table_digest": digest})   # the modelling table (after sampling); the build tags the source digest
log_metrics(rows=len(df), columns=df.shape[1], positive_rate=float(df[cfg.target].mean()))
print(f"{len(df):,} rows x {df.shape[1]} columns from {cfg.source} (digest {digest[:12]})")
if snapshot: print(f"snapshot: {snapshot}")

# %%
# the schema and summary statistics, no row: this notebook is an MLflow artifact (add `df.head()` when running by hand)
table_summary(df, ids=cfg.ids)
