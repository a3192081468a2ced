"""Import time of `mlopsnb`, its CLI and what each verb imports: this checkout against another version of the library.

Issue 18 moved modules into packages; the import time of `mlopsnb` and of each CLI verb must not get worse. For each
target, `python -X importtime -c "import <module>"` runs in a fresh interpreter, alternating this checkout and the
baseline (`--baseline DIR`, a folder holding another version's `mlopsnb/`, e.g. `git archive <commit> mlopsnb | tar -x
-C DIR`; compiled to bytecode first, as the venv is), `--rounds` times; the figure is the median of the summed
cumulative time of the statement's top-level imports (what the interpreter imports at start-up is left out).
A verb's modules are the first importable of its names (the new place first, then the old name a baseline has).

    .venv/bin/python bench/import_time.py --baseline DIR [--rounds 7] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the CLI imports for each verb group before it does anything (new module names first, then the old ones)
TARGETS = {
    "import mlopsnb": ["mlopsnb"],
    "mlopsnb (the CLI module)": ["mlopsnb.cli"],
    "run, status, plot, nb, lab": ["mlopsnb.build", "mlopsnb.pipeline"],
    "serve, score": ["mlopsnb.serve"],
    "monitor, retrain": ["mlopsnb.monitor"],
    "show, reproduce, card": ["mlopsnb.registry.provenance", "mlopsnb.lineage"],
    "promote, rollback, history": ["mlopsnb.registry.promotion", "mlopsnb.promotion"],
    "export airflow, task": ["mlopsnb.build.airflow", "mlopsnb.export"],
    "new": ["mlopsnb.scaffold"],
}
# what every `mlopsnb <verb>` imports before the verb runs: the CLI and the parser of all its verbs (a statement, run
# as it is in both versions: before issue 18 the parser imported the modules that added verbs of their own)
STATEMENTS = {"every verb's start: the parser": "import mlopsnb.cli as c\nc.parser()"}


def env(pythonpath: str | None) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    e.pop("PYTHONPATH", None)
    if pythonpath: e["PYTHONPATH"] = pythonpath
    return e


def top_level(stderr: str) -> dict[str, int]:
    "The top-level imports of an -X importtime run: {name: cumulative microseconds}."
    out = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line: continue
        _, cumulative, name = line[len("import time:"):].split("|")
        if not name.startswith(" ") or name.startswith("  "): continue   # nested imports are inside their parent's time
        out[name.strip()] = int(cumulative)
    return out


def first_importable(names: list[str], pythonpath: str | None) -> str:
    "The first of `names` this library has (without importing it)."
    code = ("import importlib.util, sys\nfor n in sys.argv[1:]:\n    try:\n        if importlib.util.find_spec(n): print(n); break\n"
            "    except ModuleNotFoundError: pass")
    found = subprocess.run([sys.executable, "-c", code, *names], env=env(pythonpath), capture_output=True, text=True,
                           cwd="/").stdout.split()
    if not found: sys.exit(f"none of {names} importable with PYTHONPATH={pythonpath}")
    return found[0]


def seconds(module: str, pythonpath: str | None, startup: set[str], code: str | None = None) -> float:
    "The import time of `import module` (or of the statements `code`), in a fresh interpreter."
    code = code or f"import {module}"
    r = subprocess.run([sys.executable, "-X", "importtime", "-W", "ignore", "-c", code], env=env(pythonpath),
                       capture_output=True, text=True, cwd="/")
    if r.returncode: sys.exit(f"{code} failed:\n{r.stderr[-2000:]}")
    return sum(us for name, us in top_level(r.stderr).items() if name not in startup) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="a folder holding another version's mlopsnb/ package")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="write every figure here")
    a = ap.parse_args()
    base = str(Path(a.baseline).resolve())
    subprocess.run([sys.executable, "-m", "compileall", "-q", base], check=True)
    here = str(ROOT)
    startup = set(top_level(subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=env(None),
                                           capture_output=True, text=True).stderr))
    rows = []
    print(f"{'what':30} {'module (this / baseline)':58} {'this s':>7} {'base s':>7} {'ratio':>6}")
    jobs = [(what, first_importable(names, here), first_importable(names[::-1] if len(names) > 1 else names, base),
             None) for what, names in TARGETS.items()]
    jobs += [(what, "(statement)", "(statement)", code) for what, code in STATEMENTS.items()]
    for what, mine, theirs, code in jobs:
        t_mine, t_base = [], []
        for _ in range(a.rounds):
            t_mine.append(seconds(mine, here, startup, code))
            t_base.append(seconds(theirs, base, startup, code))
        m, b = statistics.median(t_mine), statistics.median(t_base)
        rows.append({"what": what, "module": mine, "baseline_module": theirs, "seconds": m, "baseline_seconds": b,
                     "ratio": m / b})
        print(f"{what:30} {mine + ' / ' + theirs:58} {m:7.3f} {b:7.3f} {m / b:6.2f}")
    if a.json: Path(a.json).write_text(json.dumps({"rounds": a.rounds, "baseline": base, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
