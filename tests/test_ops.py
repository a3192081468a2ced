"""Operations: killed writers, a shared SQLite store under parallel writers, the MLflow UI, self-contained HTML, Jupyter extensions."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, clean_env

WRITER = """
import sys, time
from pathlib import Path
from mlopsnb.core import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "w") as f:
        f.write("half of it"); f.flush()
        print(tmp, flush=True)
        time.sleep(120)
        f.write("the rest")
"""


def start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    "Start a process writing `target` through atomic_path; return it and its temporary file once it is mid-write."
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env=clean_env({"PYTHONPATH": str(ROOT)}))
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file() and tmp.parent == target.parent, tmp
    return proc, tmp


def test_a_writer_killed_mid_write_leaves_a_temporary_that_only_cleaning_removes(tmp_path):
    from mlopsnb.core import clean_stale_temp
    killed, killed_tmp = start_writer(tmp_path / "products" / "data.parquet")
    alive, alive_tmp = start_writer(tmp_path / "products" / "deep" / "model.skops")
    try:
        killed.send_signal(signal.SIGKILL); killed.wait()
        assert not (tmp_path / "products" / "data.parquet").exists()     # never a half-written product
        assert killed_tmp.read_text() == "half of it"                    # but a leftover
        assert clean_stale_temp(tmp_path) == [killed_tmp]
        assert not killed_tmp.exists()
        assert alive_tmp.read_text() == "half of it"                     # the live writer's file is untouched
        assert clean_stale_temp(tmp_path, max_age=0) == []
    finally:
        alive.kill(); alive.wait()
    assert clean_stale_temp(tmp_path) == [alive_tmp]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "products"]


# --- A SQLite store under parallel writers -------------------------------------------------------------

LOGGER = """
import sys, time
from pathlib import Path
uri, go, name, prepare, batches = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlopsnb.tracking import prepare_store
while not go.exists(): time.sleep(0.01)
if prepare: uri = prepare_store(uri)
client = MlflowClient(tracking_uri=uri)
exp = client.get_experiment_by_name("race")
if exp is None:
    try: exp_id = client.create_experiment("race")
    except MlflowException: exp_id = client.get_experiment_by_name("race").experiment_id   # created meanwhile
else: exp_id = exp.experiment_id
run_id = client.create_run(exp_id, run_name=name).info.run_id
for i in range(batches):
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"m{k}", float(i * k), ts, i) for k in range(5)],
                     tags=[RunTag(f"t{i % 3}", str(i))], synchronous=True)
client.set_terminated(run_id)
print(run_id)
"""

READER = """
import sys, time
from pathlib import Path
uri, go, done, prepare = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
from mlflow.tracking import MlflowClient
from mlopsnb.tracking import prepare_store
while not go.exists(): time.sleep(0.01)
if prepare: uri = prepare_store(uri)
client, reads = MlflowClient(tracking_uri=uri), 0
while not done.exists():
    exp = client.get_experiment_by_name("race")
    if exp is not None:
        for r in client.search_runs([exp.experiment_id], max_results=100):
            client.get_metric_history(r.info.run_id, "m1"); reads += 1
    time.sleep(0.05)
print(reads)
"""


def race(folder: Path, prepare: bool, writers: int = 6, batches: int = 50) -> tuple[str, list[subprocess.CompletedProcess], subprocess.CompletedProcess]:
    "Start `writers` loggers and a reader on one fresh store at the same instant; return the store URI and their results."
    uri, go, done = f"sqlite:///{folder / 'store' / 'mlflow.db'}", folder / "go", folder / "done"
    env = clean_env({"PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"})
    py = lambda code, *args: subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs = [py(LOGGER, uri, go, f"w{i}", int(prepare), batches) for i in range(writers)]
    reader = py(READER, uri, go, done, int(prepare))
    try:
        time.sleep(1); go.touch()                   # imports done or nearly: everyone starts together
        results = []
        for p in procs:
            out, err = p.communicate(timeout=500)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        done.touch()
        out, err = reader.communicate(timeout=60)
        return uri, results, subprocess.CompletedProcess(reader.args, reader.returncode, out, err)
    finally:
        for p in [*procs, reader]:
            if p.poll() is None: p.kill(); p.wait()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_six_writers_and_a_reader_share_a_fresh_sqlite_store(tmp_path):
    uri, results, reader = race(tmp_path, prepare=True)
    errors = [r.stderr[-2000:] for r in results + [reader] if r.returncode]
    assert not errors, "\n---\n".join(errors)
    assert not any("database is locked" in r.stderr for r in results + [reader])
    assert int(reader.stdout) > 0                   # the reader did read while they wrote
    from mlflow.tracking import MlflowClient
    from mlopsnb.tracking import prepare_store
    client = MlflowClient(tracking_uri=prepare_store(uri))
    for r in results:
        run = client.get_run(r.stdout.strip())
        assert run.info.status == "FINISHED"
        assert run.data.tags["t0"] == "48" and run.data.tags["t2"] == "47"
        for k in range(5):
            assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, f"m{k}"), key=lambda m: m.step)] \
                == [float(i * k) for i in range(50)]
    import sqlite3
    assert sqlite3.connect(uri.removeprefix("sqlite:///")).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def write_under_a_long_reader(db: Path, uri: str) -> tuple[float, str]:
    "Log a metric while another connection holds a read transaction open; return the seconds it took and 'ok' or the error."
    import sqlite3
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("e")).info.run_id
    client.log_batch(run, metrics=[Metric("a", 0.0, 0, 0)], synchronous=True)
    reader = sqlite3.connect(db)
    reader.execute("BEGIN"); reader.execute("SELECT count(*) FROM metrics").fetchone()   # e.g. a notebook's open cursor
    start = time.monotonic()
    try: client.log_batch(run, metrics=[Metric("a", 1.0, 0, 1)], synchronous=True); outcome = "ok"
    except Exception as e: outcome = str(e)
    finally: reader.rollback(); reader.close()
    return time.monotonic() - start, outcome


def test_a_long_reader_does_not_hold_up_writers_in_a_prepared_store(tmp_path):
    from mlopsnb.tracking import prepare_store
    seconds, outcome = write_under_a_long_reader(tmp_path / "mlflow.db", prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert outcome == "ok" and seconds < 5, (seconds, outcome)


@pytest.mark.slow
def test_without_wal_a_long_reader_locks_writers_out(tmp_path):
    "What prepare_store prevents: MLflow's default rollback journal, a reader, and a writer failing after MLflow's 20 s."
    seconds, outcome = write_under_a_long_reader(tmp_path / "mlflow.db", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "database is locked" in outcome and seconds >= 19, (seconds, outcome)


# --- mlopsnb ui ------------------------------------------------------------------------------------------

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    "The ids of every live process below `pid` (Linux /proc)."
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try: fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError: continue   # ended meanwhile
        parent[int(stat.parent.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        here = todo.pop()
        kids = [p for p, pp in parent.items() if pp == here]
        out += kids; todo += kids
    return out


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def listening_addresses(port: int) -> set[str]:
    "Local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6, hex as the kernel writes them)."
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hexport = local.rpartition(":")
            if state == "0A" and int(hexport, 16) == port: found.add(addr)
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mlopsnb_ui_serves_the_project_store_on_localhost_with_telemetry_off(tmp_path):
    import json
    import urllib.request
    from conftest import make_project
    from mlflow.tracking import MlflowClient
    from mlopsnb.tracking import prepare_store
    project = make_project(tmp_path / "project", git=False)
    uri = prepare_store(f"sqlite:///{project / 'mlflow.db'}")
    MlflowClient(tracking_uri=uri).create_experiment("made-before", artifact_location=(project / "mlartifacts").as_uri())
    port, log = free_port(), tmp_path / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "mlopsnb"), "ui", "--port", str(port)], cwd=project, stdout=out,
                                stderr=subprocess.STDOUT, env=clean_env({"PYTHONPATH": str(ROOT)}))
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
        deadline, body = time.monotonic() + 120, None
        while time.monotonic() < deadline and body is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200: body = json.loads(r.read())
            except OSError: time.sleep(0.5)
        assert body is not None, f"no answer within 120 s:\n{log.read_text()[-3000:]}"
        assert "made-before" in {e["name"] for e in body["experiments"]}          # the project's store
        assert listening_addresses(port) == {"0100007F"}                          # 127.0.0.1 only
        procs = [proc.pid, *descendants(proc.pid)]
        assert len(procs) >= 2, "expected MLflow's CLI process and its uvicorn server"
        for pid in procs:
            env = environ_of(pid)
            assert (env.get("MLFLOW_DISABLE_TELEMETRY"), env.get("DO_NOT_TRACK")) == ("true", "true"), pid
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/3.0/mlflow/ui-telemetry", timeout=5) as r:
            assert json.loads(r.read())["disable_ui_telemetry"] is True           # what the browser is told
    finally:
        try: kids = descendants(proc.pid)   # before they are orphaned
        finally:
            proc.terminate()
            try: proc.wait(timeout=30)
            except subprocess.TimeoutExpired: proc.kill(); proc.wait()
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and [k for k in kids if Path(f"/proc/{k}").exists()]: time.sleep(0.2)
    assert not [k for k in kids if Path(f"/proc/{k}").exists()], "server processes left behind"


# --- Self-contained notebook HTML -------------------------------------------------------------------------

EXTERNAL = [r"""(?:src|href|action|data)\s*=\s*["']?\s*(?:https?:)?//""",   # <script src=...>, <link href=...>
            r"""import\s*\(?\s*["'](?:https?:)?//""",                        # import("https://...") in a module script
            r"""url\(\s*["']?(?:https?:)?//""", r"@import"]                   # CSS fetching fonts or sheets


def executed_notebook(folder: Path) -> Path:
    "Execute a small notebook with text, a table, a figure, LaTeX, a Mermaid diagram and widget state; return its path."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Churn\nThe loss is $\\sum_i (y_i - \\hat y_i)^2$.\n\n"
                                              "```mermaid\ngraph LR; a-->b\n```"),
                nbformat.v4.new_code_cell("print('rows: 600')"),
                nbformat.v4.new_code_cell("import pandas as pd\npd.DataFrame({'auc': [0.84], 'f1': [0.61]})"),
                nbformat.v4.new_code_cell("import io\nfrom matplotlib.figure import Figure\nfrom IPython.display import Image\n"
                                          "fig, buf = Figure(figsize=(2, 2)), io.BytesIO()\nfig.subplots().plot([0, 1])\n"
                                          "fig.savefig(buf, format='png'); Image(buf.getvalue())")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0}}
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    path = folder / "executed.ipynb"
    nbformat.write(nb, path)
    return path


def test_notebook_html_references_nothing_outside_the_file(tmp_path):
    import re
    from mlopsnb.build import lifecycle
    html = lifecycle.notebook_html(str(executed_notebook(tmp_path)))
    assert html is not None
    for pattern in EXTERNAL:
        found = [html[max(m.start() - 60, 0):m.end() + 60] for m in re.finditer(pattern, html, re.I)]
        assert not found, f"{pattern}: {found[:3]}"
    assert "rows: 600" in html and "0.84" in html and "<table" in html        # still the notebook, readable
    assert re.search(r"<img[^>]+src=\"data:image/png;base64,", html)          # the figure inside the file
    assert "hat y_i" in html and "a-->b" in html.replace("&gt;", ">")          # LaTeX and Mermaid kept as their source
    assert "jp-Notebook" in html and "--jp-content-font-color1" in html       # JupyterLab's styles, inlined
    assert lifecycle._exporter() is lifecycle._exporter()                     # built once per process


# --- Jupyter: Ploomber's cloud extension off, its injection on ---------------------------------------------

NO_CLOUD_FLAG = "--ServerApp.jpserver_extensions=ploomber_extension=False"   # what `mlopsnb lab` needs to pass


def installed_like_config(folder: Path) -> Path:
    "A config folder laid out as `make install` lays out {sys.prefix}/etc/jupyter: the shipped files beside an enabling .d file."
    import shutil
    etc = folder / "etc" / "jupyter"
    shutil.copytree(ROOT / "jupyter-config", etc)
    (etc / "jupyter_server_config.d").mkdir()
    (etc / "jupyter_server_config.d" / "ploomber_extension.json").write_text(
        '{"ServerApp": {"jpserver_extensions": {"ploomber_extension": true}}}')   # what pip installs
    return etc


class Lab:
    "A JupyterLab server on 127.0.0.1 for one test; `get(path)` returns (status, body text)."

    def __init__(self, argv: list[str], project: Path, home: Path, env: dict | None = None):
        import secrets
        self.port, self.token, self.log = free_port(), secrets.token_hex(16), home / f"lab-{len(list(home.glob('lab-*')))}.log"
        argv = [*argv, "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={self.port}", f"--IdentityProvider.token={self.token}"]
        env = clean_env({"JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                         "PYTHONPATH": str(ROOT), "PLOOMBER_STATS_ENABLED": "false",
                         "PLOOMBER_VERSION_CHECK_DISABLED": "true", **(env or {})})
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if self.get("api/status")[0] == 200: return
            except OSError: time.sleep(0.25)
        self.stop(); pytest.fail(f"jupyter did not answer within 60 s:\n{self.output()}")

    def get(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/{path}", headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r: return r.status, r.read().decode()
        except urllib.error.HTTPError as e: return e.code, e.read().decode(errors="replace")

    def page_config(self) -> dict:
        "The configuration JupyterLab's page hands to the front end."
        import json
        import re
        status, page = self.get("lab")
        assert status == 200, page[-2000:]
        return json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S)[1])

    def injected(self) -> str:
        "The cell Ploomber's injection extension adds to train_model.py when the notebook is opened."
        import json
        status, body = self.get("api/contents/notebooks/tasks/train_model.py?type=notebook&content=1")
        assert status == 200, body[-2000:] + self.output()
        cells = json.loads(body)["content"]["cells"]
        found = [c["source"] for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(found) == 1, self.output()
        return found[0]

    def output(self) -> str: return self.log.read_text(errors="replace")[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()


@pytest.fixture
def lab(tmp_path):
    "Start JupyterLab servers on a copied project: lab(argv, env) -> Lab; all are stopped afterwards."
    from conftest import make_project
    project, servers = make_project(tmp_path / "project", git=False), []
    def start(argv, env=None) -> Lab:
        servers.append(Lab(argv, project, tmp_path, env))
        return servers[-1]
    start.project = project
    yield start
    for s in servers: s.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_shipped_config_turns_ploombers_cloud_extension_off_and_keeps_injection(lab, tmp_path):
    plain = [str(BIN / "jupyter"), "lab", f"--ServerApp.root_dir={lab.project}"]
    # the probe: with the extension on, its API answers and its front-end plugin is offered
    control = lab([*plain, "--ServerApp.jpserver_extensions=ploomber_extension=True"])
    assert control.get("ploomber/apikey")[0] == 200, control.output()
    assert "ploomber-extension" in {e["name"] for e in control.page_config()["federated_extensions"]}
    control.stop()

    shipped = lab(plain, {"JUPYTER_CONFIG_PATH": str(installed_like_config(tmp_path))})
    assert shipped.get("ploomber/apikey")[0] == 404                                  # no server extension, no upload API
    assert "Registered ploomber-extension server extension" not in shipped.output()
    assert "ploomber-extension" in shipped.page_config()["disabledExtensions"]      # no front-end plugin either
    assert '"split_data": {"nb": ' in shipped.injected()                     # Ploomber's injection still works
    assert shipped.get("api/contents/notebooks/tasks")[0] == 200                     # on the synchronous contents manager


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_command_line_flag_turns_the_cloud_extension_off_for_mlopsnb_lab(lab):
    from mlopsnb.pipeline import lab_command
    server = lab(lab_command(lab.project, [NO_CLOUD_FLAG]))
    assert server.get("ploomber/apikey")[0] == 404, server.output()
    assert '"split_data": {"nb": ' in server.injected()
