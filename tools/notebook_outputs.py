"""Run the library notebooks' examples and keep what they show: the outputs a reader sees on GitHub or in JupyterLab.

    .venv/bin/python tools/notebook_outputs.py [notebooks/api/X.ipynb ...]     # default: every library notebook

Each notebook runs as `nbdev_test` runs it (its own folder, `#| slow` and `eval: false` cells skipped, stopping at
the first error), then its code cells keep their outputs: printed text (not stderr's logs and warnings), the last
value's plain text, tables as HTML and figures as PNG, each within a size bound (a larger one keeps its plain text
only, or nothing), export cells none.
The notebook is written only when every cell ran. `make outputs` runs it, then `nbdev_clean`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"text/plain": 6_000, "text/html": 20_000, "image/png": 150_000, "text/markdown": 6_000}
STREAM_LIMIT = 6_000
SKIP = {"slow"}


def directives(source: str) -> dict[str, list[str]]:
    "A cell's leading `#| word args` lines as {word: args} (what nbdev calls its directives)."
    found = {}
    for line in source.splitlines():
        if not line.startswith("#|"): break
        if words := line[2:].split(): found[words[0]] = words[1:]
    return found


def skipped(cell) -> bool:
    "True for a cell nbdev_test does not run: markdown, `eval: false`, a skipped flag."
    if cell.cell_type != "code": return True
    direc = directives(cell.source)
    if direc.get("eval:", [""])[0].lower() == "false": return True
    return bool(SKIP & direc.keys())


def bounded(out: dict) -> dict | None:
    "An output within LIMITS (a too-large rich form dropped for its plain text; None when nothing fits)."
    if out.get("output_type") == "stream":
        if out.get("name") == "stderr": return None        # logs and warnings: noise in a notebook read as a page
        text = "".join(out.get("text", ""))
        if len(text) > STREAM_LIMIT: text = text[:STREAM_LIMIT] + "\n... (cut: run the notebook for the rest)\n"
        return {**out, "text": text.splitlines(keepends=True)}     # as Jupyter writes it: a list of lines
    if out.get("output_type") in ("execute_result", "display_data"):
        data = {k: v for k, v in out.get("data", {}).items() if k in LIMITS and len("".join(v)) <= LIMITS[k]}
        if not data: return None
        return {**out, "data": data, "metadata": {}}
    return None                                            # errors never stay: the notebook is not written then


def run(path: Path) -> bool:
    "Run one notebook's examples and write it with their outputs; False (and the notebook untouched) on an error."
    nb = read_nb(path)
    shell = CaptureShell(path)
    here = Path.cwd()
    os.chdir(path.parent)
    try: shell.run_all(nb, exc_stop=True, preproc=skipped)
    except Exception:
        sys.stderr.write(f"{path}: {shell.prettytb(fname=path)}\n")
        return False
    finally: os.chdir(here)
    for cell in nb.cells:
        if cell.cell_type != "code": continue
        keep = not cell.source.startswith("#| export") and not skipped(cell)
        cell.outputs = [o for o in (bounded(dict(o)) for o in cell.get("outputs", [])) if o] if keep else []
    write_nb(nb, path)
    return True


def main(paths: list[str]) -> int:
    nbs = [Path(p).resolve() for p in paths] or sorted((ROOT / "notebooks" / "api").glob("*.ipynb"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    failed = [p.name for p in nbs if not run(p)]
    print(f"{len(nbs) - len(failed)} notebooks written with their outputs" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
