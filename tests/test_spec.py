"""The spec is read once per command: pipeline.yaml opened once, each task notebook parsed once (issue 18).

Every file a command opens is counted by an audit hook (`sys.addaudithook`, "open" events) in the command's own process.
An open is the library's when the innermost non-standard-library frame that asked for it is mlopsnb's own code; opens by
Ploomber or the task engine (rendering and executing the notebook) are theirs, not the spec's, and are not counted."""
import json
import sys
from pathlib import Path

import pytest

from conftest import FAST, ROOT, clean_env, make_project

pytestmark = pytest.mark.slow

HOOK = r'''
import json, os, sys, sysconfig
from pathlib import Path
out, root = Path(sys.argv[1]), Path.cwd().resolve()
lib = str(Path(__import__("importlib.util").util.find_spec("mlopsnb").origin).parent) + os.sep
std = tuple({sysconfig.get_paths()[k] + os.sep for k in ("stdlib", "platstdlib")})
site = tuple({sysconfig.get_paths()[k] + os.sep for k in ("purelib", "platlib")})
watched = {str(root / "pipeline.yaml")} | {str(p) for p in (root / "notebooks" / "tasks").glob("*.py")}
opens = []

def owner():
    "Who asked: 'mlopsnb', or the first other package below the standard library on the stack."
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if name.startswith(lib): return "mlopsnb:" + f.f_code.co_name
        if not name.startswith((*std, "<frozen")) or name.startswith(site): return "other:" + name.rpartition(os.sep)[2]
        f = f.f_back
    return "other:?"

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and not (len(args) > 1 and args[1] and "w" in str(args[1])):
        path = os.path.abspath(os.fspath(args[0]))
        if path in watched: opens.append([os.path.relpath(path, root), owner()])

sys.addaudithook(hook)
from mlopsnb.cli import main
try: code = main(sys.argv[2:])
finally: out.write_text(json.dumps(opens))
sys.exit(code)
'''


def reads(project: Path, *args: str) -> tuple[dict[str, int], dict[str, int]]:
    "Run `mlopsnb ARGS` in `project` counting opens; return ({file: opens by anyone}, {file: opens by mlopsnb})."
    import subprocess
    log = project / f"opens-{args[0]}.json"
    r = subprocess.run([sys.executable, "-c", HOOK, str(log), *args], cwd=project, capture_output=True, text=True,
                       env=clean_env(), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    opens = json.loads(log.read_text())
    every, ours = {}, {}
    for path, who in opens:
        every[path] = every.get(path, 0) + 1
        if who.startswith("mlopsnb:"): ours[path] = ours.get(path, 0) + 1
    return every, ours


def check_once(every: dict, ours: dict, what: str) -> None:
    assert every.get("pipeline.yaml") == 1, f"{what}: pipeline.yaml opened {every.get('pipeline.yaml')} times"
    many = {p: n for p, n in ours.items() if p != "pipeline.yaml" and n > 1}
    assert not many, f"{what}: task notebooks read more than once by mlopsnb: {many}"


def test_one_command_reads_the_spec_once(tmp_path):
    project = make_project(tmp_path / "p", git=False)
    tasks = {f"notebooks/tasks/{t}.py" for t in ("get_data", "validate_data", "split_data", "train_model",
                                                  "evaluate_model", "select_model", "promote_model")}
    every, ours = reads(project, "run", *FAST)
    check_once(every, ours, "run")
    assert tasks <= set(ours), f"run: a task notebook was never parsed: {tasks - set(ours)}"
    every, ours = reads(project, "run", *FAST)          # nothing to do: the same reads, no task runs
    check_once(every, ours, "a no-op run")
    every, ours = reads(project, "status", *FAST[2:])
    check_once(every, ours, "status")
