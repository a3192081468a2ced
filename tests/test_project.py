"""The project's own files: library in sync with its notebooks, one dependency list, CI, CLI, house style."""
import ast
import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, clean_env


def test_nbdev_export_and_clean_leave_the_tree_unchanged(tmp_path):
    for f in ["settings.ini", "setup.py", "pyproject.toml", "notebooks", "mlopsnb"]:
        (shutil.copytree if (ROOT / f).is_dir() else shutil.copy)(ROOT / f, tmp_path / f)
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, capture_output=True, text=True, check=True)
    git("init", "-q"); git("add", "-A"); git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "s")
    for cmd in ["nbdev_export", "nbdev_clean"]:
        subprocess.run([str(BIN / cmd)], cwd=tmp_path, check=True, capture_output=True, env=clean_env())
    assert git("status", "--porcelain").stdout == "", "run `make sync`: the library or notebooks are out of sync"


def test_environment_yml_agrees_with_settings_ini():
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert f"python={cfg['DEFAULT']['min_python']}" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == ["-r requirements.lock"]          # every package comes from settings.ini through the lock, nothing listed twice
    assert "pip install --no-deps -e ." in (ROOT / "environment.yml").read_text()
    assert not [d for d in deps if isinstance(d, str) and d not in {"pip", f"python={cfg['DEFAULT']['min_python']}"}]
    reqs = cfg["DEFAULT"]["requirements"].split()
    assert "nbdev==2.4.14" in reqs and "ploomber==0.23.3" in reqs


def locked(path) -> dict[str, str]:
    "Return {normalised name: version} of a lock file made by `make lock` (a name may be pinned per platform: kept once)."
    from packaging.utils import canonicalize_name
    found = (re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^ ;\\]+)", l) for l in path.read_text().splitlines())
    return {canonicalize_name(m[1]): m[2] for m in found if m}


def test_lock_pins_every_declared_requirement_with_hashes():
    "requirements.lock is fresh: each requirement of settings.ini pinned, in its range, hashed; uv pinned as the Makefile says."
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    pins = locked(ROOT / "requirements.lock")
    for req in map(Requirement, cfg["DEFAULT"]["requirements"].split() + cfg["DEFAULT"]["dev_requirements"].split()):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"requirements.lock pins {name}=={pins[name]}, outside {req}"
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert all("--hash=sha256:" in b for b in blocks if "==" in b), "a pin without a hash"
    assert int(pins["skops"].split(".")[1]) >= 12                                       # CVE-2025-54412, CVE-2025-54413
    uv = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    assert locked(ROOT / "requirements-uv.lock") == {"uv": uv}
    make = (ROOT / "Makefile").read_text()
    assert "--require-hashes" in make and "--no-deps" in make and "pip install -e" not in make


@pytest.mark.parametrize("name, untested", [("jupyter-client", "8.0.0"), ("ipykernel", "6.30.0"), ("ipykernel", "7.0.0")])
def test_a_wheel_install_resolves_the_tested_kernel_packages(name, untested):
    "A wheel installed with its own requirements gets the locked kernel series, never ipykernel 7 (it warns of TCP without encryption)."
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    reqs = {canonicalize_name(r.name): r for r in map(Requirement, cfg["DEFAULT"]["requirements"].split())}
    assert name in reqs, f"settings.ini does not bound {name}"
    assert reqs[name].specifier.contains(locked(ROOT / "requirements.lock")[name]), reqs[name]
    assert not reqs[name].specifier.contains(untested), f"{reqs[name]} admits {name} {untested}"

def test_the_install_compiles_bytecode():
    "Every module of an installed package has its bytecode, even ones nothing imported yet: `make install` compiles it."
    import importlib.util
    import sklearn
    pkg = Path(sklearn.__file__).parent
    missing = [p for p in pkg.rglob("*.py") if not Path(importlib.util.cache_from_source(str(p))).exists()]
    assert not missing, f"{len(missing)} modules of {pkg} without bytecode, e.g. {missing[0]}"


def test_ci_runs_what_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)
    assert "make test" in (ROOT / ".github/workflows/ci.yml").read_text()


@pytest.mark.parametrize("verb", ["", "run", "status", "plot", "nb", "lab", "ui", "history", "promote", "rollback",
                                  "approve", "reject", "serve", "score", "monitor", "show", "reproduce", "new"])
def test_cli_help(verb):
    r = subprocess.run([str(BIN / "mlopsnb"), *([verb] if verb else []), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: mlopsnb" in r.stdout


def test_task_notebooks_follow_the_house_style():
    spec = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    for t in spec["tasks"]:
        src = ROOT / t["source"]
        name = src.stem
        assert re.fullmatch(r"[a-z]+_[a-z]+", name), name                  # verb_noun
        text = src.read_text()
        assert text.count('tags=["parameters"]') == 1 and "injected-parameters" not in text, name
        tree = ast.parse(re.sub(r"^# %%.*$", "", text, flags=re.M))
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))], f"{name}: no def/class in a task"


def test_telemetry_is_off_in_every_task_process(monkeypatch):
    from mlopsnb.build import quiet_ploomber
    import os
    monkeypatch.delenv("PLOOMBER_STATS_ENABLED", raising=False)
    monkeypatch.delenv("CI", raising=False)   # ploomber_core is also quiet under CI: check the variable alone does it
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    quiet_ploomber()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["PLOOMBER_STATS_ENABLED"] == "false"     # inherited by every kernel and subprocess
    from ploomber_core.telemetry.telemetry import check_telemetry_enabled
    assert check_telemetry_enabled() is False


def test_the_library_turns_mlflow_telemetry_off_in_notebooks_too():
    code = "import os, mlopsnb.tracking; print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'))"
    r = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, env=clean_env())
    assert r.stdout.strip() == "true", r.stderr


def test_importing_the_library_leaves_mlflow_url_printing_alone(tmp_path):
    "Importing the library leaves MLflow's \"View run at\" switch alone; the `mlopsnb` command turns it off (for itself and its kernels)."
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    code = (f"import os, mlopsnb.tracking, mlopsnb.registry, mlopsnb.build, mlopsnb.serve; imported = os.environ.get({key!r}); "
            f"from mlopsnb.cli import main; main(['status']); print(imported, os.environ.get({key!r}))")
    r = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, env=clean_env(), cwd=tmp_path)
    assert r.stdout.split() == ["None", "true"], r.stderr


def test_make_outputs_keeps_what_examples_show_and_writes_nothing_on_an_error(tmp_path):
    "tools/notebook_outputs.py (`make outputs`): examples' outputs kept, export and slow cells none; an error: unchanged."
    import nbformat
    cells = [nbformat.v4.new_code_cell("#| export\ndef f(): return 41"),
             nbformat.v4.new_code_cell("import sys\nprint('a log line', file=sys.stderr)\nprint(f() + 1)"),
             nbformat.v4.new_code_cell("#| slow\nprint('slow')"), nbformat.v4.new_code_cell("{'x': f()}")]
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), good)
    nbformat.write(nbformat.v4.new_notebook(cells=[*cells, nbformat.v4.new_code_cell("1 / 0")]), bad)
    before = bad.read_text()
    tool = [sys.executable, str(ROOT / "tools" / "notebook_outputs.py")]
    ok = subprocess.run([*tool, str(good)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "1 notebooks written with their outputs", ok.stdout + ok.stderr
    out = [c.get("outputs", []) for c in nbformat.read(good, 4).cells]
    assert out[0] == [] and out[2] == []                              # export cell: none; slow cell: not run
    assert [(o["name"], "".join(o["text"])) for o in out[1]] == [("stdout", "42\n")]   # stderr's logs left out
    assert out[3][0]["data"]["text/plain"] == "{'x': 41}"
    failed = subprocess.run([*tool, str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1 and "failed: ['bad.ipynb']" in failed.stdout and "ZeroDivisionError" in failed.stderr
    assert bad.read_text() == before
