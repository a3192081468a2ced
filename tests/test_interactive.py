"""Interactive use: inject upstream/product into the task notebooks and run each one the way Jupyter would."""
import os
import shutil

import pytest

from conftest import SAMPLE, cli, store

TASKS = ["get_data", "validate_data", "split_data", "train_model", "evaluate_model", "select_model", "promote_model"]   # notebooks
pytestmark = pytest.mark.slow


def test_every_task_notebook_runs_top_to_bottom_in_a_kernel(built, tmp_path):
    import jupytext                         # here, not at the top: every pytest worker imports this file when it collects
    from nbclient import NotebookClient
    project = tmp_path / "p"
    shutil.copytree(built[0], project)
    tasks = project / "notebooks" / "tasks"
    originals = {t: (tasks / f"{t}.py").read_text() for t in TASKS}
    r = cli(project, "nb", "inject", *SAMPLE)
    assert r.returncode == 0, r.stderr
    for t in TASKS:
        text = (tasks / f"{t}.py").read_text()
        assert "injected-parameters" in text and f"{project}/products" in text, t
    env_before = dict(os.environ)
    for k in [k for k in os.environ if k.startswith(("MLFLOW_", "MLOPSNB_"))]: del os.environ[k]
    try:
        for t in TASKS:
            nb = jupytext.read(tasks / f"{t}.py")
            NotebookClient(nb, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(tasks)}}).execute()
            errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, (t, errors)
    finally:
        os.environ.clear(); os.environ.update(env_before)
    client = store(project)
    exp = client.get_experiment_by_name("mlopsnb-churn")
    interactive = client.search_runs([exp.experiment_id], "tags.`mlopsnb.mode` = 'interactive'")
    assert len(interactive) == len(TASKS)       # one per kernel session, never the pipeline's runs
    metrics = {k for run in interactive for k in run.data.metrics}
    assert {"rows", "roc_auc", "promoted"} <= metrics
    assert all(run.data.tags.get("git.commit") for run in interactive)
    # run by hand, promote_model registered nothing and moved no alias: only the build's version exists
    assert [str(v.version) for v in client.search_model_versions("name='churn'")] == ["1"]
    r = cli(project, "nb", "remove", *SAMPLE)
    assert r.returncode == 0, r.stderr
    assert {t: (tasks / f"{t}.py").read_text() for t in TASKS} == originals
