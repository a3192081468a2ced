# %% [markdown]
# # train_model
# Fit every candidate of the grid (model families x hyperparameters) on the training set, choose
# the best on the validation set, and log it to MLflow as a pickle-free (skops) sklearn Pipeline
# with its features inside, a signature and an input example.

# %% tags=["parameters"]
upstream = ["split_data"]
product = None
target = None  # the target column
ids = None     # identifier columns, never features
metric = None  # selection metric on the validation set (higher is better)
seed = None    # random state of every estimator
grid = None    # list of {family: ..., hyperparameter: [values]}
drop = None    # columns the model drops first (data.drop)

# %%
from mlopsnb.data import read_frame, write_json
from mlopsnb.registry import log_model, save_model
from mlopsnb.tracking import log_artifact, log_metrics, log_params
from mlopsnb.train import fit_grid

# %%
train, val = read_frame(upstream["split_data"]["train"]), read_frame(upstream["split_data"]["val"])
X_train, y_train = train.drop(columns=[target, *ids]), train[target]
X_val, y_val = val.drop(columns=[target, *ids]), val[target]
model, candidates = fit_grid(grid, X_train, y_train, X_val, y_val, metric=metric, seed=seed, drop=drop)
candidates

# %%
best = candidates.iloc[0]
save_model(model, product["model"])
candidates.to_csv(product["candidates"], index=False)
log_artifact(product["candidates"])
log_params(best_candidate=best["candidate"], best_family=best["family"], candidates=len(candidates))
log_metrics({f"val_{metric}": float(best[metric]), "candidates": len(candidates)})
logged = log_model(model, X_train.head(20))   # skops format, signature, input example, sha256 manifest
write_json({**logged, "candidate": best["candidate"], f"val_{metric}": float(best[metric]),
            "features": list(X_train.columns)}, product["info"])
print(f"best: {best['candidate']} (validation {metric} {best[metric]:.4f}); logged as {logged['model_uri']}")
