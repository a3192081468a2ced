"""Scaling up: parallel builds (--jobs), SQLite under parallel writers, a team store on a real PostgreSQL and MLflow server.

The PostgreSQL tests start the real server (initdb + pg_ctl, as a non-root user, on 127.0.0.1 on a free port) and
a real `mlflow server` on it; they skip, saying why, where no PostgreSQL can be found or installed.
"""
import http.client
import http.server
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import BIN, SAMPLE, clean_env, cli, empty_project, make_project, set_grid, start_cli

# ---------------------------------------------------------------- a small spec with independent branches

TASK = '''# %% tags=["parameters"]
upstream = {up}
product = None
rounds = None

# %%
import json, os, pathlib, time
from mlopsnb.tracking import log_metrics, log_params
if os.environ.get("PAUSE_IN") == "{name}":
    pathlib.Path(os.environ["PAUSE_MARKER"]).write_text(str(os.getpid())); time.sleep(120)
t0 = time.time()
for i in range(rounds):                 # many small writes, from every branch at once
    log_metrics({{"{name}_round": i, "{name}_value": i * 0.5}}, step=i)
log_params({{"{name}_pid": os.getpid()}})
time.sleep(1.0)
pathlib.Path(product["out"]).write_text(json.dumps({{"start": t0, "end": time.time(), "pid": os.getpid()}}))
'''


def branches_project(dest: Path, names=("a", "b", "c", "d"), rounds: int = 40) -> Path:
    "A project with independent tasks `names` and a task `join` that depends on all of them; each task logs `rounds` metric batches."
    (dest / "notebooks" / "tasks").mkdir(parents=True)
    spec = "executor:\n  dotted_path: mlopsnb.build.RecordingExecutor\ntasks:\n"
    for name, up in [*((n, None) for n in names), ("join", list(names))]:
        (dest / "notebooks" / "tasks" / f"{name}.py").write_text(TASK.format(up=up, name=name))
        spec += (f"  - source: notebooks/tasks/{name}.py\n    product:\n      nb: '{{{{products}}}}/{name}.ipynb'\n"
                 f"      out: '{{{{products}}}}/{name}.json'\n    params:\n      rounds: {rounds}\n")
    (dest / "pipeline.yaml").write_text(spec)
    (dest / "env.yaml").write_text("experiment: branches\n")
    return dest


def local_client(project: Path):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def all_runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=5000) if exp else []


@pytest.mark.slow
def test_parallel_build_records_each_task_and_survives_parallel_sqlite_writers(tmp_path):
    "--jobs 4: the four branches run at once in their own processes, each logging to its own child run of the build, no lock error."
    project = branches_project(tmp_path / "p")
    r = cli(project, "run", "--engine", "inprocess", "--jobs", "4")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "locked" not in out.lower() and "Traceback" not in out, out
    spans = {n: json.loads((project / "products" / f"{n}.json").read_text()) for n in "abcd"}
    assert len({s["pid"] for s in spans.values()}) == 4                        # a process per task
    assert max(s["start"] for s in spans.values()) < min(s["end"] for s in spans.values())   # all four at once
    client = local_client(project)
    runs = all_runs(client, "branches")
    build = [x for x in runs if x.data.tags.get("mlopsnb.task") == "(build)"]
    assert len(build) == 1 and build[0].info.status == "FINISHED"
    kids = {x.info.run_name: x for x in runs if x.data.tags.get("mlflow.parentRunId") == build[0].info.run_id}
    assert sorted(kids) == ["a", "b", "c", "d", "join"] and {k.info.status for k in kids.values()} == {"FINISHED"}
    for n in "abcd":
        data = kids[n].data
        assert data.metrics[f"{n}_round"] == 39 and data.params[f"{n}_pid"] == str(spans[n]["pid"])
        assert len(client.get_metric_history(kids[n].info.run_id, f"{n}_round")) == 40     # every write kept
        assert data.params["rounds"] == "40"
    r2 = cli(project, "run", "--engine", "inprocess", "--jobs", "4")
    assert r2.returncode == 0 and r2.stdout.startswith("nothing to do"), r2.stdout + r2.stderr
    bad = cli(project, "run", "--jobs", "0")
    assert bad.returncode == 1 and bad.stderr.strip() == "mlopsnb: error: --jobs 0: a whole number of 1 or more", bad.stderr


def _gone(pid: int) -> bool:
    "Whether a process ended (a zombie nobody reaps counts as ended)."
    try: state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError: return True
    return "\nState:\tZ" in state


def _start_paused(project: Path, marker: Path) -> tuple[subprocess.Popen, int]:
    "Start `mlopsnb run --jobs 2` with task a paused; return the build and a's task process once a paused."
    marker.unlink(missing_ok=True)
    proc = start_cli(project, "run", "--engine", "inprocess", "--jobs", "2", env={"PAUSE_IN": "a", "PAUSE_MARKER": str(marker)})
    deadline = time.time() + 300
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None and time.time() < deadline, "the build ended before task a paused"
        time.sleep(0.2)
    task_pid = int(marker.read_text())
    assert task_pid != proc.pid
    return proc, task_pid


def _wait_gone(pid: int, seconds: float = 10) -> None:
    deadline = time.time() + seconds
    while not _gone(pid):
        assert time.time() < deadline, f"task process {pid} outlived its build"
        time.sleep(0.1)


@pytest.mark.slow
def test_stopped_or_killed_parallel_build_leaves_nothing_taken_as_finished(tmp_path):
    "SIGTERM, then kill -9, of a parallel build: task processes die with it, runs end KILLED, the next build reruns the task."
    project = branches_project(tmp_path / "p", names=("a", "b"), rounds=5)
    marker = tmp_path / "paused"
    proc, task_pid = _start_paused(project, marker)
    os.kill(proc.pid, signal.SIGTERM)                 # stopped: the build stops its tasks and ends their runs at once
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, out + err
    _wait_gone(task_pid)
    runs = all_runs(local_client(project), "branches")
    assert not [x for x in runs if x.info.status == "RUNNING"]
    stopped = [x for x in runs if x.info.run_name == "a"]
    assert [x.info.status for x in stopped] == ["KILLED"] and "interrupted" in stopped[0].data.tags["mlopsnb.error"]
    proc, task_pid = _start_paused(project, marker)
    os.kill(proc.pid, signal.SIGKILL)                 # killed: the build only; its task process must not outlive it
    proc.communicate()
    _wait_gone(task_pid)
    status = cli(project, "status")
    row = next(l for l in status.stdout.splitlines() if l.split()[:1] == ["a"])
    assert "up to date" not in row, status.stdout
    r = cli(project, "run", "--engine", "inprocess", "--jobs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    ran = [l.split()[0] for l in r.stdout.splitlines() if l.startswith("  ") and " executed " in l]
    assert "a" in ran and "join" in ran, r.stdout
    runs = all_runs(local_client(project), "branches")
    assert not [x for x in runs if x.info.status == "RUNNING"]
    killed = [x for x in runs if x.info.run_name == "a" and x.info.status == "KILLED"]
    assert len(killed) == 2 and sum(bool(x.data.tags.get("mlopsnb.reconciled")) for x in killed) == 1


WRITER = '''
import sys
from mlopsnb.config import Project
from mlopsnb.tracking import recorder
rec = recorder(Project.load(sys.argv[1], environ={{}}))
for i in range({runs}):
    run = rec.start_run(f"w{{sys.argv[2]}}-{{i}}", tags={{"writer": sys.argv[2]}})
    rec.log_params(run, {{"writer": sys.argv[2], "i": i}})
    for step in range(5): rec.log_metrics(run, {{f"m{{k}}": k * step for k in range(20)}}, step=step)
    rec.end_run(run)
print("done")
'''


@pytest.mark.slow
def test_sqlite_store_takes_parallel_writers(tmp_path):
    "Six processes create runs and log at once on a new SQLite store (schema created once, WAL, busy timeout): nothing lost, no lock error."
    project = empty_project(tmp_path / "p", "writers")
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(runs=15))
    env = clean_env({"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    procs = [subprocess.Popen([str(BIN / "python"), str(script), str(project), str(w)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for w in range(6)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "done", err[-3000:]
        assert "locked" not in err.lower(), err[-3000:]
    runs = all_runs(local_client(project), "writers")
    assert len(runs) == 6 * 15 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(len(r.data.metrics) == 20 and r.data.params["writer"] == r.data.tags["writer"] for r in runs)


# ---------------------------------------------------------------- a real PostgreSQL and a real MLflow server

PG_BINS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14", "13")]


def _pg_bin() -> Path | None:
    for d in PG_BINS:
        if (d / "initdb").exists() and (d / "pg_ctl").exists(): return d
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def find_postgres() -> tuple[Path | None, str]:
    "Return PostgreSQL's bin folder (installing Debian's package if we may), or None and why not."
    if d := _pg_bin(): return d, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"): return None, "no initdb/pg_ctl on this machine and no apt-get as root to install them"
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if r.returncode: return None, f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return _pg_bin(), "installed by apt-get, yet no initdb/pg_ctl found"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    "A real PostgreSQL server on 127.0.0.1 for this module; yields a function that creates a database and returns its URL."
    bin_dir, why = find_postgres()
    if bin_dir is None: pytest.skip(f"PostgreSQL unavailable: {why}")
    user = None
    if os.geteuid() == 0:                                        # postgres refuses to run as root
        try: user = pwd.getpwnam("postgres")
        except KeyError: pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    home = Path(tempfile.mkdtemp(prefix="mlopsnb-pg-"))          # not under pytest's 0700 tmp: the postgres user must reach it
    as_user = ["runuser", "-u", "postgres", "--"] if user else []
    if user: os.chown(home, user.pw_uid, user.pw_gid)
    data, port = home / "data", free_port()
    r = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync", "-E", "UTF8"],
                       capture_output=True, text=True, cwd=home)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-w", "-t", "60",
                        "-o", f"-h 127.0.0.1 -p {port} -k {home} -c fsync=off -c max_connections=200", "start"],
                       capture_output=True, text=True, cwd=home)
    assert r.returncode == 0, r.stderr + (home / "server.log").read_text()
    import sqlalchemy as sa

    def database(name: str) -> str:
        admin = sa.create_engine(f"postgresql://mlflow@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c: c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return f"postgresql://mlflow@127.0.0.1:{port}/{name}"
    try: yield database
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True, cwd=home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    "A real `mlflow server` on its own PostgreSQL database, artifacts served through it; yields (URL, artifacts folder)."
    artifacts, port = tmp_path_factory.mktemp("server-artifacts"), free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")
    env = clean_env({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", postgres("server"),
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200: break
        except OSError: pass
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0); pytest.fail(f"mlflow server did not start:\n{log.read()[-3000:]}")
        time.sleep(0.5)
    try: yield url, artifacts
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)
        log.close()


TEAM = 8          # builds at once through the MLflow server (the number), then as many manual promotions at once
DIRECT_TEAM = 4   # on PostgreSQL named directly: the advisory lock and the shared schema need a race, not eight of them
TINY_GRID = "        - family: logistic_regression\n          C: [1.0]\n"   # one candidate, one branch (7 tasks): 8 builds share 2 cores


def _team_round(tmp: Path, uri: str, shared: Path, team: int) -> tuple[list[Path], list[subprocess.CompletedProcess]]:
    "Build `team` copies of the project at once against one store, each on its own seed; return the projects and results."
    projects = []
    for i in range(team):
        p = make_project(tmp / f"member{i}")
        set_grid(p, TINY_GRID)
        spec = p / "pipeline.yaml"               # no permutation importance: the store's load is what is under test
        spec.write_text(spec.read_text().replace("      n_repeats: 5 ", "      n_repeats: 0 "))
        projects.append(p)
    env = {"MLFLOW_TRACKING_URI": uri, "MLOPSNB_USER": "member"}
    def build(i):
        return cli(projects[i], "run", "--engine", "inprocess", *SAMPLE, "--env", f"seed={i}", "--env", f"artifacts={shared}",
                   env=env, timeout=900)
    with ThreadPoolExecutor(team) as pool: results = list(pool.map(build, range(team)))
    return projects, results


def _no_store_errors(result: subprocess.CompletedProcess) -> None:
    out = result.stdout + result.stderr
    for bad in ("database is locked", "Internal Server Error", " 500 ", " 502 ", " 503 ", " 504 ", "Traceback"):
        assert bad not in out, f"{bad!r} surfaced to the user:\n{out[-4000:]}"


def _check_team_store(uri: str, projects: list[Path]) -> None:
    team = len(projects)
    "Every build's runs are there and complete; the model versions and the history agree with the alias."
    from mlopsnb.config import Store
    from mlopsnb.registry import champion_stack, history
    from mlopsnb.registry import get_alias, load_version
    store = Store(uri)
    client = store.client()
    runs = all_runs(client, "mlopsnb-churn")
    builds = [r for r in runs if r.data.tags.get("mlopsnb.task") == "(build)"]
    assert len(builds) == team and {b.info.status for b in builds} == {"FINISHED"}
    tasks = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(tasks) == team * 7 and {r.info.status for r in tasks} == {"FINISHED"}
    by_task: dict[str, set] = {}
    for r in tasks:          # every build's task logged the same params and metrics (champion_* only when it had one to compare)
        keys = (frozenset(r.data.params), frozenset(k for k in r.data.metrics if not k.startswith("champion_")))
        by_task.setdefault(r.info.run_name, set()).add(keys)
        assert r.data.params, r.info.run_name
    assert all(len(v) == 1 for v in by_task.values()), {k: v for k, v in by_task.items() if len(v) > 1}
    assert {"roc_auc", "pr_auc", "brier"} <= set(next(iter(by_task["evaluate_model-logistic_regression"]))[1])
    versions = client.search_model_versions("name='churn'")
    assert len(versions) == team
    entries = history(store, "churn")
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))        # no entry overwritten by a racing move
    assert sum(e["alias"] == "challenger" for e in entries) == team                  # each build's challenger move is there
    assert sum(e["alias"] == "champion" for e in entries) >= team                    # and each build's champion decision
    champion, stack = get_alias(store, "churn", "champion"), champion_stack(entries)
    moves = [e for e in entries if e["alias"] == "champion" and e["action"] not in ("held", "refused")]
    assert champion == (stack[-1] if stack else None) == (moves[-1]["to"] if moves else None)   # every gate may have held
    if champion:
        model = load_version(store, "churn", "@champion")         # serving's verified loader (sha256 manifest), through the store
        assert hasattr(model, "predict_proba")


def _manual_moves(projects: list[Path], uri: str) -> list[subprocess.CompletedProcess]:
    "As many people as projects force different versions to @champion at the same moment."
    env = {"MLFLOW_TRACKING_URI": uri}
    def promote(i):
        return cli(projects[i], "promote", "churn", str(i + 1), "--force", "--reason", f"race {i}", env=env, timeout=300)
    with ThreadPoolExecutor(len(projects)) as pool: return list(pool.map(promote, range(len(projects))))


def _team_mode(tmp: Path, uri: str, shared: Path, team: int = TEAM) -> list[Path]:
    projects, results = _team_round(tmp, uri, shared, team)
    for r in results:
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        _no_store_errors(r)
    _check_team_store(uri, projects)
    moves = _manual_moves(projects, uri)
    for m in moves:
        _no_store_errors(m)
        assert m.returncode == 0 or "already @champion" in m.stderr, m.stdout + m.stderr
    _check_team_store(uri, projects)
    from mlopsnb.config import Store
    from mlopsnb.registry import history
    from mlopsnb.registry import get_alias
    assert get_alias(Store(uri), "churn", "champion") is not None
    manual = [e for e in history(Store(uri), "churn") if re.match(r"(forced: )?race \d", e["reason"])]
    assert len(manual) == sum(m.returncode == 0 for m in moves) >= team - 1      # every manual move recorded once
    return projects


@pytest.mark.slow
def test_team_store_postgresql_direct(postgres, tmp_path):
    "4 builds and then 4 promotions at once on a PostgreSQL store named directly (schema created once, advisory lock)."
    uri = postgres("direct")
    shared = tmp_path / "team-artifacts"
    _team_mode(tmp_path, uri, shared, DIRECT_TEAM)
    from mlopsnb.config import Store
    exp = Store(uri).client().get_experiment_by_name("mlopsnb-churn")
    assert exp.artifact_location == shared.resolve().as_uri()                    # the configured (shared) folder


@pytest.mark.slow
def test_team_store_through_mlflow_server(mlflow_server, tmp_path):
    "8 builds and then 8 promotions at once through an MLflow server on PostgreSQL; artifacts go to the server's folder."
    url, served = mlflow_server
    projects = _team_mode(tmp_path, url, tmp_path / "unused")
    from mlopsnb.config import Store
    exp = Store(url).client().get_experiment_by_name("mlopsnb-churn")
    assert exp.artifact_location.startswith("mlflow-artifacts:")                 # placed by the server, not a client's disk
    assert any(served.rglob("*.ipynb")) and any(served.rglob("MLmodel"))           # notebooks and models on the server
    assert not any((p / "mlartifacts").exists() for p in projects) and not (tmp_path / "unused").exists()



class SlowDeletes(http.server.BaseHTTPRequestHandler):
    "A proxy in front of the MLflow server that holds each DELETE for up to a second: a slow link between contenders and store."
    target: tuple[str, int] = ("127.0.0.1", 0)

    def forward(self):
        if self.command == "DELETE": time.sleep(random.uniform(0, 1.0))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection(*self.target, timeout=60)
        conn.request(self.command, self.path, body=body,
                     headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"): self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = forward

    def log_message(self, *args): pass


CONTENDER = """import json, os, pathlib, sys, time
from mlopsnb.config import Store
from mlopsnb.registry import registry_lock
url, events, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
store = Store(url)
store.client().search_registered_models(max_results=1)          # imports and the first connection done before the start
print("ready", flush=True)
while not go.exists(): time.sleep(0.005)                          # every contender released at once
with registry_lock(store, timeout=240):
    with open(events, "a") as f: f.write(json.dumps(["in", os.getpid()]) + "\\n")
    time.sleep(1.0)
    with open(events, "a") as f: f.write(json.dumps(["out", os.getpid()]) + "\\n")
"""


@pytest.mark.slow
def test_lock_record_takeover_is_won_by_one_contender(mlflow_server, tmp_path):
    "Contenders over an abandoned lock record on a real MLflow server (DELETEs slowed): one holds the lock at a time, each gets it."
    from mlopsnb.config import Store
    from mlopsnb.registry import LOCK_MODEL
    url, _ = mlflow_server
    client, contenders = Store(url).client(), 6
    SlowDeletes.target = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowDeletes)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    slow = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        for rnd in range(3):
            # a record left by a holder on another machine, past its lease: every contender sees it abandoned at once
            client.create_registered_model(LOCK_MODEL, tags={"host": "elsewhere", "pid": "1", "token": f"gone{rnd}", "since": "0"})
            events, go = tmp_path / f"events{rnd}.jsonl", tmp_path / f"go{rnd}"
            procs = [subprocess.Popen([str(BIN / "python"), "-c", CONTENDER, slow, str(events), str(go)], env=clean_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(contenders)]
            for p in procs:                                                  # each has imported and connected: start them
                assert p.stdout.readline() == "ready\n", p.communicate()[1][-2000:]
            go.touch()
            outs = [p.communicate(timeout=400) for p in procs]
            assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
            seen, holders = [json.loads(l) for l in events.read_text().splitlines()], set()
            for kind, pid in seen:                                           # the order the holders wrote in
                if kind == "in": holders.add(pid)
                else: holders.discard(pid)
                assert len(holders) <= 1, f"round {rnd}: two holders at once: {seen}" + "".join(e[-1500:] for _, e in outs)
            assert len(seen) == 2 * contenders, seen                        # each contender held it once
            left = [m.name for m in client.search_registered_models(f"name LIKE '{LOCK_MODEL}%'")]
            assert left == [], left                                          # no record and no takeover claim left behind
    finally:
        proxy.shutdown()
