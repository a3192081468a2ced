"""JupyterLab 4 on a project, over real HTTP: the contents API works and Ploomber injects the task's parameters.

Ploomber 0.23.3's server extension (enabled in the environment) wraps the contents manager with a
synchronous `get`; under JupyterLab 4's default asynchronous manager every contents request answers
500 and the file browser is empty. The project ships `ServerApp.contents_manager_class` = the
synchronous LargeFileManager twice: `mlopsnb lab` passes it on the command line
(`mlopsnb.build.lab_command`) and `make install` puts `jupyter-config/jupyter_server_config.json`
into `{sys.prefix}/etc/jupyter/` for a plain `jupyter lab`.
"""
import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, ROOT, clean_env, make_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SHIPPED = ROOT / "jupyter-config" / "jupyter_server_config.json"
INSTALLED = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.json"
ASYNC_MANAGER = "jupyter_server.services.contents.largefilemanager.AsyncLargeFileManager"
TASKS = {"get_data.py", "validate_data.py", "split_data.py", "train_model.py", "evaluate_model.py", "select_model.py", "promote_model.py",
         "score_batch.py", "monitor_drift.py"}   # pipeline.yaml's seven, then pipeline.serve.yaml's two
START_TIMEOUT = 40  # seconds for the server to answer; it usually takes about 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str) -> tuple[int, dict]:
    "GET `url` with the token; return the status and the JSON body."
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Server:
    "A Jupyter server started as a subprocess on 127.0.0.1; `url(path)` and `get(path)` talk to it."

    def __init__(self, command, project: Path, home: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.log = home / f"jupyter-{self.port}.log"
        # --allow-root: harmless for other users, needed where tests run as root (containers)
        cmd = command(project, ["--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={self.port}",
                                f"--IdentityProvider.token={self.token}"])
        env = clean_env({"JUPYTER_CONFIG_DIR": str(home / "config"),   # no user config: only the environment's
                         "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                         "PLOOMBER_STATS_ENABLED": "false", "PLOOMBER_VERSION_CHECK_DISABLED": "true"})
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)

    def url(self, path: str) -> str: return f"http://127.0.0.1:{self.port}/{path}"

    def get(self, path: str) -> tuple[int, dict]: return get(self.url(path), self.token)

    def output(self, tail: int | None = 4000) -> str:
        "The server's log (its last `tail` characters; all of it if `tail` is None)."
        text = self.log.read_text(errors="replace")
        return text[-tail:] if tail else text

    def wait(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"jupyter exited with {self.proc.returncode}:\n{self.output()}"
            try:
                if self.get("api/status")[0] == 200: return self
            except OSError: pass
            time.sleep(0.25)
        pytest.fail(f"jupyter did not answer within {START_TIMEOUT} s:\n{self.output()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "project", git=False)


@pytest.fixture
def serve(tmp_path):
    "Start a Jupyter server: serve(command, project) -> a Server that answers; every server is stopped afterwards."
    servers = []
    def start(command, project: Path) -> Server:
        servers.append(Server(command, project, tmp_path))
        return servers[-1].wait()
    yield start
    for s in servers: s.stop()


def lab_via_mlopsnb(project: Path, extra: list[str]) -> list[str]:
    "What `mlopsnb lab` runs: the setting on the command line."
    from mlopsnb.build import lab_command
    return lab_command(project, extra)


def lab_plain(project: Path, extra: list[str]) -> list[str]:
    "A plain `jupyter lab` from the environment: the setting comes from the installed config file."
    return [str(BIN / "jupyter"), "lab", f"--ServerApp.root_dir={project}", *extra]


def lab_async(project: Path, extra: list[str]) -> list[str]:
    "A plain `jupyter lab` told to use JupyterLab 4's default asynchronous manager again."
    return lab_plain(project, [f"--ServerApp.contents_manager_class={ASYNC_MANAGER}", *extra])


def test_shipped_setting_is_the_library_setting_and_installed():
    from mlopsnb.build import JUPYTER_SETTINGS
    assert json.loads(SHIPPED.read_text()) == JUPYTER_SETTINGS
    assert INSTALLED.is_file(), f"{INSTALLED} is missing: run `make install`"
    assert json.loads(INSTALLED.read_text()) == JUPYTER_SETTINGS, f"{INSTALLED} is stale: run `make install`"


@pytest.mark.parametrize("command", [lab_via_mlopsnb, lab_plain], ids=["mlopsnb-lab", "plain-jupyter-lab"])
def test_lab_lists_opens_and_injects_task_notebooks(serve, project, command):
    before = snapshot(project)
    server = serve(command, project)

    status, listing = server.get("api/contents/notebooks/tasks")
    assert status == 200, server.output()
    assert {c["name"] for c in listing["content"]} == TASKS

    status, model = server.get("api/contents/notebooks/tasks/train_model.py?type=notebook&content=1")
    assert status == 200, server.output()
    cells = model["content"]["cells"]
    tags = [c["metadata"].get("tags", []) for c in cells]
    assert ["parameters"] in tags
    injected = [c["source"] for c, t in zip(cells, tags) if "injected-parameters" in t]
    assert len(injected) == 1, f"Ploomber injected no cell:\n{server.output()}"
    assert "upstream = {" in injected[0] and '"split_data": {' in injected[0] and "product = {" in injected[0]   # upstream order varies
    assert f'"{project.resolve() / "products"}' in injected[0], "products resolved outside the served project"

    assert snapshot(project) == before, "opening a task notebook wrote into the project"


def test_async_manager_breaks_the_contents_api(serve, project):
    "The breakage the shipped setting prevents: Ploomber's extension on JupyterLab 4's async manager."
    server = serve(lab_async, project)
    assert server.get("api/contents/notebooks/tasks")[0] == 500
    assert server.get("api/contents/notebooks/tasks/train_model.py?type=notebook&content=1")[0] == 500
    assert "'coroutine' object is not subscriptable" in server.output(tail=None)
