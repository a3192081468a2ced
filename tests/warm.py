"""A warm interpreter for the tests' `cli()`: the libraries a build imports are loaded once, each command is a fork.

A command run through it is the real `mlopsnb` entry point (`sys.exit(main())`) in a process of its own, with its own
argv, working folder, environment, stdin (/dev/null), stdout and stderr (files), signals and exit (atexit handlers
run as in any interpreter's exit). What differs from a fresh `mlopsnb` process is only that the heavy imports
(ploomber, papermill, mlflow, scikit-learn, skops, skl2onnx: ~11 s of CPU of a ~26 s sample build) were done once,
before the fork, in the tests' clean environment. Tests whose subject is a process's start (import-time behaviour,
a minimal environment, PYTHONPATH) run `cli(..., fresh=True)`; MLOPSNB_TEST_FRESH=1 runs every command fresh.

Protocol, a JSON object a line: stdin {"id", "argv", "cwd", "env", "out", "err", "session"}; stdout {"ready": seconds}
once, then {"id", "pid"} when a command is forked and {"id", "code"} when it ended (-N: killed by signal N, as
subprocess). The client side (`client()`, `WarmProcess`) is at the end: the tests' conftest imports this module.
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# what `mlopsnb run` imports on its way through a build (the CLI imports them lazily, each where it is needed);
# not onnxruntime: its import starts a native thread, which a forked child's exit would try to join (and abort)
PRELOAD = ["mlopsnb.cli", "mlopsnb.build", "mlopsnb.build.run", "mlopsnb.build.parallel", "mlopsnb.registry",
           "mlopsnb.tracking", "mlopsnb.report", "mlopsnb.evaluate", "mlopsnb.train", "mlopsnb.data", "mlopsnb.monitor",
           "ploomber.spec", "ploomber.executors", "papermill", "ploomber_engine", "nbconvert", "nbformat", "IPython",
           "mlflow", "mlflow.sklearn", "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
           "sklearn.ensemble", "sklearn.linear_model", "sklearn.inspection", "sklearn.metrics", "skops.io", "skl2onnx",
           "matplotlib.pyplot", "pandas", "pyarrow.parquet"]


def preload() -> float:
    "Import what a build imports, the way the CLI does (Ploomber's quiet switches first); return the seconds it took."
    import importlib
    t0, before = time.perf_counter(), dict(os.environ)
    from mlopsnb.build.context import quiet_ploomber
    quiet_ploomber()                        # as `mlopsnb run` does before importing Ploomber
    for name in PRELOAD: importlib.import_module(name)
    os.environ.clear()
    os.environ.update(before)               # the switches it set are the child's own business, as in a fresh process
    threads = sorted(Path(f"/proc/{os.getpid()}/task").iterdir())
    names = [(t / "comm").read_text().strip() for t in threads]
    assert set(names[1:]) <= {"jemalloc_bg_thd"}, f"threads started while importing: {names} (a fork takes only one)"
    return time.perf_counter() - t0


def child(req: dict) -> None:
    "In the forked child: become the command's process, then run the console script's line; never returns."
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    if req.get("session"): os.setsid()     # Popen(start_new_session=True)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = list(req["argv"])
    from mlopsnb.cli import main
    sys.exit(main())                        # the console script's line; SystemExit leaves through the interpreter's exit


def serve() -> None:
    "Fork a child per request line; report its pid, then its exit code, until stdin closes."
    children, buf, done = {}, b"", False
    while not done or children:
        ready, _, _ = select.select([] if done else [0], [], [], 0.05 if children else None)
        if ready:
            chunk = os.read(0, 1 << 16)
            done, buf = not chunk, buf + chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0: child(req)
                children[pid] = req["id"]
                reply({"id": req["id"], "pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0: break
            reply({"id": children.pop(pid), "code": os.waitstatus_to_exitcode(status)})


def reply(msg: dict) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


# ---------------------------------------------------------------- the client, in the test process

class WarmProcess:
    "A command forked by the warm interpreter, handled like a `subprocess.Popen` whose output goes to files."

    def __init__(self, argv: list[str], box: dict, out: Path, err: Path):
        self.args, self.box, self.out, self.err = argv, box, out, err
        box["forked"].wait(60)
        assert "pid" in box, f"the warm interpreter did not fork {argv}"
        self.pid = box["pid"]

    @property
    def returncode(self) -> int | None:
        return self.box.get("code")

    def poll(self) -> int | None:
        if self.box["done"].is_set() and "code" not in self.box: raise RuntimeError("the warm interpreter ended first")
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self.box["done"].wait(timeout): raise subprocess.TimeoutExpired(self.args, timeout)
        return self.poll()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        "Wait for the end; return its stdout and stderr (and remove their files)."
        self.wait(timeout)
        texts = tuple(f.read_text(errors="replace") for f in (self.out, self.err))
        for f in (self.out, self.err): f.unlink(missing_ok=True)
        return texts

    def send_signal(self, sig: int) -> None:
        if self.returncode is None: os.kill(self.pid, sig)

    def kill(self) -> None: self.send_signal(signal.SIGKILL)

    def terminate(self) -> None: self.send_signal(signal.SIGTERM)


class Client:
    "One warm interpreter and the commands sent to it; a reader thread hands each its pid and exit code."

    def __init__(self, bin_dir: Path, env: dict):
        self.lock, self.waiting, self.next = threading.Lock(), {}, 0
        self.tmp = Path(tempfile.mkdtemp(prefix="mlopsnb-warm-"))
        self.proc = subprocess.Popen([str(bin_dir / "python"), __file__], cwd=self.tmp, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        assert first.startswith('{"ready"'), f"the warm interpreter did not start: {first!r}"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.lock: box = self.waiting[msg["id"]]
            box.update(msg)
            box["done" if "code" in msg else "forked"].set()
        with self.lock:                                   # the interpreter is gone: nobody waits forever
            for box in self.waiting.values(): box["forked"].set(); box["done"].set()

    def start(self, argv: list[str], cwd: Path, env: dict, session: bool = False) -> WarmProcess:
        "Fork `argv` (argv[0] the console script) in `cwd` with exactly `env`."
        with self.lock:
            self.next += 1
            rid, box = self.next, {"forked": threading.Event(), "done": threading.Event()}
            self.waiting[rid] = box
            out, err = self.tmp / f"{rid}.out", self.tmp / f"{rid}.err"
            self.proc.stdin.write(json.dumps({"id": rid, "argv": argv, "cwd": str(cwd), "env": env, "out": str(out),
                                              "err": str(err), "session": session}) + "\n")
            self.proc.stdin.flush()
        return WarmProcess(argv, box, out, err)

    def close(self) -> None:
        "Close its stdin: it ends once the commands it forked have."
        self.proc.stdin.close()
        try: self.proc.wait(60)
        except subprocess.TimeoutExpired: self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


_CLIENT: list[Client] = []
_LOCK = threading.Lock()


def client(bin_dir: Path, env: dict) -> Client:
    "This test process's warm interpreter, started at its first use with `env` (each xdist worker has its own)."
    with _LOCK:
        if not _CLIENT or _CLIENT[0].proc.poll() is not None: _CLIENT[:] = [Client(bin_dir, env)]
        return _CLIENT[0]


def close() -> None:
    with _LOCK:
        for c in _CLIENT: c.close()
        _CLIENT.clear()


if __name__ == "__main__":
    seconds = preload()
    reply({"ready": seconds})
    serve()
