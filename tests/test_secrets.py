"""Secrets never in argv or files, and no telemetry (issue 17): a store password, a data source password, a webhook
token and an exported DAG's secrets are hunted in every process's command line and every file mlopsnb writes, with
a real PostgreSQL (password authentication), real `mlopsnb` processes, a real webhook receiver and a real Airflow 3."""
import ast
import http.server
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, FAST, ROOT, SAMPLE, clean_env, cli, make_project, store

SECRET = f"s3cret-{secrets.token_hex(6)}"     # found nowhere on this machine unless something leaks it
ADMIN = "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minimal_env(extra: dict | None = None) -> dict:
    "A bare login shell's environment: no MLFLOW_*, no CI or pytest variables (MLflow takes those for telemetry off)."
    env = {"PATH": f"{BIN}{os.pathsep}/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1"}
    return {**env, **(extra or {})}


def command_lines_with(text: str) -> dict[int, str]:
    "{pid: command line} of every process on this machine whose argv contains `text`."
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try: argv = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError: continue
        if text in argv: found[int(d.name)] = argv[:300]
    return found


def files_with(folder: Path, text: str) -> list[Path]:
    "Files under `folder` whose bytes contain `text`."
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and text.encode() in p.read_bytes()]


def wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> bytes:
    "Return the body of the first successful GET of `url`; fail if `proc` ends or `seconds` pass first."
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as r: return r.read()
        except OSError: time.sleep(0.5)
    pytest.fail(f"{url}: no answer within {seconds} s\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try: proc.wait(60)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()


# ---------------------------------------------------------------- a PostgreSQL that checks passwords

@pytest.fixture(scope="module")
def pg():
    "A real PostgreSQL on 127.0.0.1 with scram-sha-256 authentication; the admin's password is SECRET."
    from test_scale import find_postgres
    bin_dir, why = find_postgres()
    if bin_dir is None: pytest.skip(f"PostgreSQL unavailable: {why}")
    user = None
    if os.geteuid() == 0:
        try: user = pwd.getpwnam("postgres")
        except KeyError: pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    home = Path(tempfile.mkdtemp(prefix="mlopsnb-pg-secrets-"))
    (home / "pw").write_text(SECRET + "\n")
    as_user = ["runuser", "-u", "postgres", "--"] if user else []
    if user:
        for p in (home, home / "pw"): os.chown(p, user.pw_uid, user.pw_gid)
    data, port = home / "data", free_port()
    r = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "scram-sha-256", "-U", ADMIN,
                        f"--pwfile={home / 'pw'}", "--no-sync", "-E", "UTF8"], capture_output=True, text=True, cwd=home)
    assert r.returncode == 0, r.stderr
    (home / "pw").unlink()
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    r = subprocess.run([*pg_ctl, "-l", str(home / "server.log"), "-w", "-t", "60",
                        "-o", f"-h 127.0.0.1 -p {port} -k {home} -c fsync=off", "start"],
                       capture_output=True, text=True, cwd=home)
    assert r.returncode == 0, r.stderr + (home / "server.log").read_text()
    import sqlalchemy as sa

    class Server:
        def url(self, db: str, user: str = ADMIN, password: str = SECRET) -> str:
            from urllib.parse import quote
            return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}/{db}"

        def sql(self, *statements: str, db: str = "postgres") -> None:
            admin = sa.create_engine(self.url(db), isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                for s in statements: c.execute(sa.text(s))
            admin.dispose()
    try: yield Server()
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, cwd=home)
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------- ${VAR} in a URL's password

@pytest.mark.slow
def test_a_password_with_at_and_slash_reaches_the_right_server(pg, monkeypatch):
    "data.source `postgresql://quoted:${VAR}@host/db`, VAR=p@ss/w:rd, connects: the password is quoted when expanded."
    from mlopsnb.config import DataConfig
    from mlopsnb.data import read_source
    pg.sql("CREATE ROLE quoted LOGIN PASSWORD 'p@ss/w:rd'", "CREATE DATABASE quoted OWNER quoted")
    monkeypatch.setenv("MLOPSNB_TEST_PGPASSWORD", "p@ss/w:rd")
    source = pg.url("quoted", "quoted", "x").replace(":x@", ":${MLOPSNB_TEST_PGPASSWORD}@")
    df = read_source(DataConfig(source=source, query="select 7 as x, current_user as who"))
    assert df.to_dict("records") == [{"x": 7, "who": "quoted"}]


# ---------------------------------------------------------------- a store password: no argv, no file

PAUSE_CELL = '''
# %%
import json, os, pathlib, time
if os.environ.get("TEST_MARKER"):
    from mlflow.telemetry.client import get_telemetry_client
    seen = {"telemetry_env": os.environ.get("MLFLOW_DISABLE_TELEMETRY"), "client": get_telemetry_client() is not None}
    pathlib.Path(os.environ["TEST_MARKER"]).write_text(json.dumps(seen))
    deadline = time.time() + 600
    while not pathlib.Path(os.environ["TEST_GO"]).exists() and time.time() < deadline: time.sleep(0.2)
'''


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_store_password_is_in_no_process_argv_and_no_file(pg, tmp_path):
    """A build on `postgresql://mlflow:<secret>@...` with papermill kernels started as new processes, then `mlopsnb ui`:
    the password is in no process's command line, no file under the project, no MLflow param or tag; the task kernels
    (minimal environment) have MLflow's telemetry off."""
    pg.sql("CREATE DATABASE store")
    uri = pg.url("store")
    project = make_project(tmp_path / "p")
    task = project / "notebooks" / "tasks" / "split_data.py"
    task.write_text(task.read_text() + PAUSE_CELL)
    marker, go = tmp_path / "paused", tmp_path / "go"
    env = minimal_env({"MLFLOW_TRACKING_URI": uri, "MLOPSNB_FORK_KERNELS": "0",      # kernels started as new processes
                       "TEST_MARKER": str(marker), "TEST_GO": str(go)})
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        build = subprocess.Popen([str(BIN / "mlopsnb"), "run", *SAMPLE], cwd=project, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not marker.exists():
            assert build.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        kernels = command_lines_with("ipykernel_launcher")
        assert any("exec_lines" in c for c in kernels.values()), kernels     # warm kernels started ahead
        assert command_lines_with(SECRET) == {}
        assert json.loads(marker.read_text()) == {"telemetry_env": "true", "client": False}   # the task's kernel
        go.touch()
        assert build.wait(900) == 0, log.read_text()[-3000:]
    finally:
        go.touch()
        if build.poll() is None: os.killpg(build.pid, signal.SIGKILL); build.wait()

    port, ui_log = free_port(), tmp_path / "ui.log"
    with open(ui_log, "w") as out:
        ui = subprocess.Popen([str(BIN / "mlopsnb"), "ui", "--port", str(port)], cwd=project,
                              env=minimal_env({"MLFLOW_TRACKING_URI": uri}), stdout=out, stderr=subprocess.STDOUT)
    try:
        body = wait_for(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10", ui, ui_log)
        assert "mlopsnb-churn" in {e["name"] for e in json.loads(body)["experiments"]}   # the store of the environment
        assert command_lines_with(SECRET) == {}
    finally: stop(ui)

    assert files_with(project, SECRET) == []                   # products, .mlopsnb/state.json, notebooks, mlartifacts
    assert SECRET not in log.read_text() + ui_log.read_text()  # nor on the screen
    from mlopsnb.config import Store
    client = Store(uri).client()
    exp = client.get_experiment_by_name("mlopsnb-churn")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) >= 8
    for r in runs:
        assert SECRET not in json.dumps([r.data.params, r.data.tags]), r.info.run_name
    for mv in client.search_model_versions("name='churn'"):
        assert SECRET not in json.dumps([mv.tags, mv.source, mv.description])


# ---------------------------------------------------------------- a project built once (SQLite), for the commands

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "One project built on the sample (in process), with an undrifted and a drifted batch of raw records."
    from test_monitor import reference_data, shifted
    p = make_project(tmp_path_factory.mktemp("secrets"))
    r = cli(p, "run", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    df = reference_data()
    df.sample(300, random_state=1).to_csv(p / "same.csv", index=False)
    shifted(df, 1000, 2).to_csv(p / "drifted.csv", index=False)
    return p


REPORTER = '''
import atexit, json, os, sys
def _report():
    mod = sys.modules.get("mlflow.telemetry.client")
    out = {"argv": sys.argv[:3], "telemetry_env": os.environ.get("MLFLOW_DISABLE_TELEMETRY"),
           "mlflow": "mlflow" in sys.modules, "client": mod is not None and mod.get_telemetry_client() is not None}
    with open(os.path.join(os.environ["TEST_REPORTS"], f"{os.getpid()}.json"), "w") as f: json.dump(out, f)
atexit.register(_report)
'''


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlflow_telemetry_is_off_for_score_monitor_and_serve_in_a_minimal_environment(built, tmp_path):
    "No MLFLOW_* variable, no CI variable: `score`, `monitor` and `serve` load MLflow with its telemetry client off."
    site, reports = tmp_path / "site", tmp_path / "reports"
    site.mkdir(); reports.mkdir()
    (site / "sitecustomize.py").write_text(REPORTER)          # reports from inside each mlopsnb process, at its exit
    env = minimal_env({"PYTHONPATH": str(site), "TEST_REPORTS": str(reports)})
    def run(*args):
        cmd = [str(BIN / "mlopsnb"), *args]
        return subprocess.run(cmd, cwd=built, env=env, capture_output=True, text=True, timeout=600)
    r = run("score", "same.csv", str(tmp_path / "scored.csv"), *SAMPLE)
    assert r.returncode == 0, r.stderr
    r = run("monitor", "--current", "drifted.csv", *SAMPLE)
    assert r.returncode in (0, 2), r.stdout + r.stderr
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen([str(BIN / "mlopsnb"), "serve", "--port", str(port), "--no-log", *SAMPLE], cwd=built,
                                 env=env, stdout=out, stderr=subprocess.STDOUT)
    try: wait_for(f"http://127.0.0.1:{port}/health", serve, log)
    finally: stop(serve, signal.SIGINT)
    got = {json.loads(p.read_text())["argv"][1]: json.loads(p.read_text()) for p in reports.glob("*.json")
           if len(json.loads(p.read_text())["argv"]) > 1}
    for verb in ("score", "monitor", "serve"):
        seen = got[verb]
        assert seen["mlflow"] and (seen["telemetry_env"], seen["client"]) == ("true", False), (verb, seen)


# ---------------------------------------------------------------- webhooks

class Hook(http.server.BaseHTTPRequestHandler):
    "A webhook receiver: keeps each request's path and body; answers with the server's `code`."
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.got.append((self.path, json.loads(body)))
        self.send_response(self.server.code); self.end_headers()

    def log_message(self, *a): pass


@pytest.fixture
def hook():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    srv.got, srv.code = [], 204
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield srv
    finally: srv.shutdown()


@pytest.mark.slow
def test_monitor_webhook_is_http_only_redacted_and_not_retried_on_4xx(built, hook):
    "`mlopsnb monitor`: file:// refused (flag, config) in one line; 404 at a secret path: one try, the path not shown."
    r = cli(built, "monitor", "--current", "drifted.csv", "--webhook", "file:///etc/passwd", *SAMPLE)
    refused = "mlopsnb: error: --webhook ***: only http:// and https:// URLs"
    assert (r.returncode, r.stderr.strip()) == (1, refused), r.stdout + r.stderr
    (built / "hook.yaml").write_text("webhook: file:///etc/passwd\n")
    r = cli(built, "monitor", "--current", "drifted.csv", "--config", "hook.yaml", *SAMPLE)
    refused = "mlopsnb: error: hook.yaml: webhook: only http:// and https:// URLs"
    assert (r.returncode, r.stderr.strip()) == (1, refused), r.stderr
    hook.code = 404
    url = f"http://127.0.0.1:{hook.server_port}/services/{SECRET}"
    (built / "hook.yaml").write_text(f"webhook: {url}\nwebhook_backoff_s: 0.01\n")
    r = cli(built, "monitor", "--current", "drifted.csv", "--config", "hook.yaml", *SAMPLE)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "webhook: NOT delivered (HTTPError: 404 Not Found) after 1 attempt(s)" in r.stdout, r.stdout
    assert [p for p, _ in hook.got] == [f"/services/{SECRET}"]       # one attempt: a 404 does not change
    assert SECRET not in r.stdout + r.stderr
    shown = f"http://127.0.0.1:{hook.server_port}/***"
    assert f"webhook {shown}: not delivered" in r.stderr, r.stderr   # the log line, redacted
    folder = sorted((built / "products" / "monitoring").glob("2*"))[-1]
    assert json.loads((folder / "summary.json").read_text())["config"]["webhook"] == shown
    assert files_with(built / "products", SECRET) == [] and files_with(built / "mlartifacts", SECRET) == []


@pytest.mark.slow
def test_pipeline_webhook_with_a_token_is_delivered_with_the_token(built, hook):
    "pipeline.serve.yaml's monitor_drift, `?token=<secret>`: the POST carries the token; no product or artifact does."
    shutil.copy(ROOT / "pipeline.serve.yaml", built / "pipeline.serve.yaml")
    spec = built / "pipeline.serve.yaml"
    url = f"http://127.0.0.1:{hook.server_port}/hook?token={SECRET}"
    spec.write_text(spec.read_text().replace("      current: null ", "      current: drifted.csv ")
                    .replace("        webhook: null ", f"        webhook: '{url}' "))
    r = cli(built, "run", "--pipeline", "pipeline.serve.yaml", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [p for p, _ in hook.got] == [f"/hook?token={SECRET}"] and hook.got[0][1]["status"] == "drift"
    summary = json.loads((built / "products" / "monitoring" / "summary.json").read_text())
    assert summary["webhook"]["delivered"] is True
    assert summary["config"]["webhook"] == f"http://127.0.0.1:{hook.server_port}/***"
    assert SECRET not in r.stdout + r.stderr
    assert files_with(built / "products", SECRET) == [] and files_with(built / "mlartifacts", SECRET) == []
    client = store(built)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    assert runs and all(SECRET not in json.dumps([r.data.params, r.data.tags]) for r in runs)


# ---------------------------------------------------------------- an exported Airflow DAG

@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_airflow_dag_holds_no_secret_and_its_task_gets_it_from_a_variable(pg, tmp_path):
    """`export airflow --env data.source=postgresql://reader:<secret>@... --env data.query=...'{{'...`: the DAG file
    and the command Airflow renders hold no secret and keep the `{{`; the task's rendered environment gets the password
    from an Airflow Variable (AIRFLOW_VAR_... in the worker's environment), and the rendered command, run as the
    BashOperator runs it, reads the table through PostgreSQL's password check."""
    from test_airflow import airflow, airflow_bin
    import pandas as pd
    import sqlalchemy as sa
    pg.sql(f"CREATE ROLE reader LOGIN PASSWORD '{SECRET}'", "CREATE DATABASE churn OWNER reader")
    from test_monitor import reference_data
    engine = sa.create_engine(pg.url("churn", "reader"))
    reference_data().to_sql("churn", engine, index=False)
    engine.dispose()
    bin_ = airflow_bin()
    project = make_project(tmp_path / "p")
    dags = tmp_path / "dags"
    query = "select * from churn where '{{' <> '}}'"                 # Jinja would choke on it, or eat it
    r = cli(project, "export", "airflow", "--out", str(dags), "--engine", "inprocess", *SAMPLE,
            "--env", f"data.source={pg.url('churn', 'reader')}", "--env", f"data.query={query}")
    assert r.returncode == 0, r.stderr
    assert "MLOPSNB_SECRET_DATA_SOURCE: the secret in --env data.source" in r.stdout, r.stdout
    assert files_with(dags, SECRET) == [] and SECRET not in r.stdout + r.stderr
    home = tmp_path / "airflow"
    env = clean_env({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                     "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
                     "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                     "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                     "AIRFLOW_VAR_MLOPSNB_SECRET_DATA_SOURCE": SECRET})   # the Variable, from the worker's environment
    assert airflow(bin_, env, "db", "migrate").returncode == 0
    errors = airflow(bin_, env, "dags", "list-import-errors", "--local", "-o", "json")
    assert errors.returncode == 0, errors.stderr
    assert json.loads(errors.stdout.strip().splitlines()[-1]) == [], errors.stdout + errors.stderr
    rendered = airflow(bin_, env, "tasks", "render", "mlopsnb-churn", "get_data", "2026-01-01")
    assert rendered.returncode == 0, rendered.stderr
    def part(name):   # the value printed under "# property: <name>", between comment lines
        lines = rendered.stdout.split(f"# property: {name}")[1].splitlines()
        return next(l for l in lines if l and not l.startswith("#"))
    command, task_env = part("bash_command"), ast.literal_eval(part("env"))
    assert "'\"'\"'{{'\"'\"' <> '\"'\"'}}'\"'\"'" in command                # the query as written, shell-quoted
    assert "${MLOPSNB_SECRET_DATA_SOURCE}" in command and SECRET not in command
    assert task_env["MLOPSNB_SECRET_DATA_SOURCE"] == SECRET             # the Variable, rendered into its env only
    # what the BashOperator runs: bash -c <command> in the project, its env over the worker's (try 1: `render` says 0)
    ran = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True, text=True, timeout=600,
                         env=clean_env({**task_env, "MLOPSNB_ATTEMPT": "1"}))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert len(pd.read_parquet(project / "products" / "data" / "raw.parquet")) == 600   # queried, with the password
    assert files_with(project, SECRET) == []
    assert files_with(home, SECRET) == []                           # nor Airflow's home (its database)
