# %% [markdown]
# # score_batch
# Score a file of raw records with a registered model version (`@champion` by default), chunk by
# chunk, checked exactly as `mlopsnb serve` checks a request, into Parquet (ids carried through,
# probability, decision). The version it resolved to, the row count and the score distribution
# are recorded in this task's MLflow run. The file and the version the alias points at are tracked
# inputs: a new export of the file, or `@champion` moving, makes this task run again.

# %% tags=["parameters"]
upstream = None
product = None
scoring: "ScoringConfig" = None   # input file, model_name, version (@champion), chunk_rows
ids = None                        # identifier columns: carried through to the scored file
contract = None                   # the data contract file: blanks allowed, known categories
threshold: float | None = None    # a decision threshold overriding the version's own (null: the one it carries)

# %%
import numpy as np
import pandas as pd
from mlopsnb.config import ScoringConfig
from mlopsnb.config import Project
from mlopsnb.data import read_contract, write_json
from mlopsnb.serve import load_scorer, score_file
from mlopsnb.tracking import log_dict, log_metrics, set_tags, task_root, task_store

# %%
cfg, root = ScoringConfig.model_validate(scoring), task_root()
project = Project.load(root)
contract_file = root / contract if contract else None
scorer = load_scorer(task_store(), cfg.model_name, cfg.version, contract=read_contract(contract_file) if contract_file and contract_file.is_file() else None,
                     ids=list(ids or []), threshold=threshold, threshold_source="score_batch.threshold",
                     fallback=project.spec.threshold(project.params))   # a version carrying no threshold: the spec's
print(f"scoring {cfg.input} with {cfg.model_name} version {scorer.version} ({scorer.path} path), "
      f"threshold {scorer.threshold:g} ({scorer.threshold_source})")

# %%
summary = score_file(scorer, root / cfg.input, product["scored"], chunk_rows=cfg.chunk_rows)
scores = pd.read_parquet(product["scored"], columns=["probability"])["probability"].to_numpy()
counts, edges = np.histogram(scores, bins=10, range=(0.0, 1.0))
summary |= {"input": cfg.input, "version_requested": cfg.version, "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
write_json(summary, product["summary"])
pd.DataFrame({"from": edges[:-1], "to": edges[1:], "rows": counts})

# %%
set_tags({"mlopsnb.model_name": cfg.model_name, "mlopsnb.model_version": scorer.version, "mlopsnb.scoring_path": scorer.path})
log_metrics(rows=summary["rows"], score_mean=summary["score_mean"], score_p50=summary["score_p50"], score_p90=summary["score_p90"],
            positive_rate=summary["positive_rate"])
log_dict(summary, "score_batch.json")
print(f"scored {summary['rows']} rows: mean score {summary['score_mean']:.4f}, {summary['positive_rate']:.1%} at or above {scorer.threshold:g}")
