"""A warm interpreter for the tests' `cli()`: the libraries a build imports are loaded once, each command is a fork.

A command run through it is the real `mlopsnb` entry point (`sys.exit(main())`) in a process of its own, with its own
argv, working folder, environment, stdin (/dev/null), stdout and stderr (files), signals and exit (atexit handlers
run as in any interpreter's exit). What differs from a fresh `mlopsnb` process is only that the heavy imports
(ploomber, papermill, mlflow, scikit-learn, skops, skl2onnx: ~11 s of CPU of a ~26 s sample build) were done once,
before the fork, in the tests' clean environment. Tests whose subject is a process's start (import-time behaviour,
a minimal environment, PYTHONPATH) run `cli(..., fresh=True)`; MLOPSNB_TEST_FRESH=1 runs every command fresh.

Protocol, a JSON object a line: stdin {"id", "argv", "cwd", "env", "out", "err"}; stdout {"ready": seconds} once,
then {"id", "pid"} when a command is forked and {"id", "code"} when it ended (-N: killed by signal N, as subprocess).
"""
import json
import os
import select
import sys
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


if __name__ == "__main__":
    seconds = preload()
    reply({"ready": seconds})
    serve()
