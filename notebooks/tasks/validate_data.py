# %% [markdown]
# # validate_data
# Check the table against its data contract (schema, ranges, categories, missing-value budget).
# The contract is inferred on the first run, written to `contracts/`, and then committed: from
# then on, any violation stops the build with a message naming the column; a rule marked
# `severity: warn` is reported (and recorded as a warning) without stopping it.

# %% tags=["parameters"]
upstream = ["get_data"]
product = None
data: "DataConfig" = None  # the `data` section of env.yaml (names the contract file)

# %%
from mlopsnb.config import DataConfig
from mlopsnb.data import log_table
from mlopsnb.data import check_contract, contract_violations, infer_contract, read_contract, read_frame, violation_messages, write_contract, write_json
from mlopsnb.tracking import log_metrics, task_root

# %%
cfg = DataConfig.model_validate(data)
df = read_frame(upstream["get_data"]["data"])
log_table(df, "raw", upstream["get_data"]["data"], "validation")
root = task_root()
path = cfg.contract_path(root)
if path.exists():
    contract = read_contract(path, where=str(path.relative_to(root)) if path.is_relative_to(root) else str(path))
    print(f"checking {len(df):,} rows against {path.name} ({len(contract['columns'])} columns)")
else:
    contract = infer_contract(df, path.stem, ids=cfg.ids)
    write_contract(contract, path)
    print(f"no contract yet: inferred {path} from this data; review it and commit it")

# %%
found = contract_violations(df, contract)
problems, warnings = violation_messages(found, "error"), violation_messages(found, "warn")
write_json({"contract": str(path), "rows": len(df), "violations": problems, "warnings": warnings}, product["report"])
log_metrics(contract_violations=len(problems), contract_warnings=len(warnings), rows=len(df))
for p in problems: print("violation:", p)
for w in warnings: print("warning:", w)
check_contract(df, contract, where=f"data contract {path.name}")
print(f"data contract: all checks pass{f' ({len(warnings)} warnings)' if warnings else ''}")
