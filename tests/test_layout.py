"""The layout issue 18 asks for, checked from the source: no import cycles between mlopsnb modules and no private
name imported across them. `bench/import_cycles.py` draws the import graph (module- and function-level imports)."""
import ast
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mlopsnb"
def test_no_import_cycles():
    out = subprocess.run([sys.executable, "bench/import_cycles.py", "mlopsnb"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "cycle among" not in out, out


def private_imports(pkg: Path = PKG) -> list[str]:
    "Return `file:line: name` for every private name one mlopsnb module imports from another."
    found = []
    for f in sorted(pkg.rglob("*.py")):
        if f.name == "_modidx.py": continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mlopsnb")):
                found += [f"{f.relative_to(pkg.parent)}:{node.lineno}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_private_name_is_imported_across_modules(tmp_path):
    assert private_imports() == []
    pkg = tmp_path / "mlopsnb"
    pkg.mkdir()
    (pkg / "a.py").write_text("from mlopsnb.registry import _hidden, public\nfrom .b import __version__\n")
    assert private_imports(pkg) == ["mlopsnb/a.py:1: _hidden"]   # the check sees one when there is one


def test_a_spec_naming_the_old_module_still_loads(tmp_path):
    "pipeline.yaml files written before issue 18 name `mlopsnb.pipeline.RecordingExecutor`: they load, with a warning."
    (tmp_path / "t.py").write_text('# %% tags=["parameters"]\nupstream = None\nproduct = None\n')
    (tmp_path / "pipeline.yaml").write_text("executor:\n  dotted_path: mlopsnb.pipeline.RecordingExecutor\n"
                                            "tasks:\n  - source: t.py\n    product: t.ipynb\n")
    (tmp_path / "env.yaml").write_text("tracking_uri: sqlite:///m.db\n")
    code = ("import warnings\nwarnings.simplefilter('always')\nfrom mlopsnb.config import Project\n"
            "from mlopsnb.build import RecordingExecutor, load_dag\n"
            "print(type(load_dag(Project.load('.', environ={})).executor) is RecordingExecutor)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "True", r.stderr
    assert "FutureWarning: mlopsnb.pipeline moved to mlopsnb.build" in r.stderr, r.stderr


def modules(pkg: Path = PKG) -> list[Path]:
    return [f for f in sorted(pkg.rglob("*.py")) if f.name != "_modidx.py"]


def test_no_module_over_420_lines_and_no_function_over_60():
    "Issue 18: 'no module over ~400 lines, no function over ~60 lines' (a module's ~400 allows its docstrings)."
    big = [f"{f.relative_to(ROOT)}: {n} lines" for f in modules() if (n := len(f.read_text().splitlines())) > 420]
    long = [f"{f.relative_to(ROOT)}:{node.lineno}: {node.name} {node.end_lineno - node.lineno + 1} lines"
            for f in modules() for node in ast.walk(ast.parse(f.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert big == [] and long == [], big + long


def printers(pkg: Path = PKG) -> list[str]:
    "Return `file:line` of every print() or sys.stdout/stderr.write() outside the cli package and the progress display."
    found = []
    for f in modules(pkg):
        rel = f.relative_to(pkg).as_posix()
        if rel.startswith("cli/") or rel == "build/progress.py": continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call): continue
            fn = node.func
            if (isinstance(fn, ast.Name) and fn.id == "print") or (
                    isinstance(fn, ast.Attribute) and fn.attr == "write" and isinstance(fn.value, ast.Attribute)
                    and fn.value.attr in {"stdout", "stderr"}):
                found.append(f"{rel}:{node.lineno}")
    return found


def test_only_the_cli_prints(tmp_path):
    "The library returns values and logs; the `mlopsnb` command (mlopsnb/cli/) prints them. A build's progress aside."
    assert printers() == []
    (tmp_path / "mod.py").write_text("import sys\nprint('x')\nsys.stderr.write('y')\nlog.info('z')\n")
    assert printers(tmp_path) == ["mod.py:2", "mod.py:3"]   # the check sees them when they are there


def test_the_readme_map_names_every_module():
    "README's architecture picture is a newcomer's map: every package and module in mlopsnb/ is on it, by its name."
    text = (ROOT / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    words = set(block.replace(",", " ").replace("(", " ").replace(")", " ").split())
    missing = []
    for f in modules():
        parts = f.relative_to(PKG).with_suffix("").parts
        if parts[0] in {"__init__", "moved"}: continue          # the package itself; old names (mlopsnb.moved)
        if len(parts) == 1 and parts[0] not in words: missing.append(parts[0])
        if len(parts) == 2:
            if f"{parts[0]}/" not in words: missing.append(f"{parts[0]}/")
            if parts[1] != "__init__" and parts[1] not in words: missing.append("/".join(parts))
    assert missing == [], f"README's architecture picture does not name: {', '.join(sorted(set(missing)))}"


def test_lines_within_120_characters_and_no_semicolons():
    "Issue 18: '8% of lines exceed 120 characters and 339 lines join statements with `;`' (nbdev's `__all__` exempt)."
    found = []
    for f in modules():
        src = f.read_text()
        found += [f"{f.relative_to(ROOT)}:{i}: {len(l)} characters" for i, l in enumerate(src.splitlines(), 1)
                  if len(l) > 120 and not l.startswith("__all__")]
        semis = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(src).readline)
                 if t.type == tokenize.OP and t.string == ";"}
        found += [f"{f.relative_to(ROOT)}:{i}: `;` joins statements" for i in sorted(semis)]
    assert found == [], "\n".join(found)


def export_cells(nb: Path) -> list[tuple[int, int, bool]]:
    "[(cell index, lines, followed by an example)] of a notebook's `#| export` cells."
    cells = [(c["cell_type"], "".join(c["source"])) for c in json.loads(nb.read_text())["cells"]]
    ex = [i for i, (t, s) in enumerate(cells) if t == "code" and s.startswith("#| export")]
    out = []
    for k, i in enumerate(ex):
        nxt = ex[k + 1] if k + 1 < len(ex) else len(cells)
        example = any(t == "code" and not s.startswith(("#| export", "#| hide")) for t, s in cells[i + 1:nxt])
        out.append((i, len(cells[i][1].splitlines()) - 1, example))
    return out


def test_every_export_cell_fits_a_screen_and_is_followed_by_an_example():
    "Issue 18: 'export cells small enough to read in one screen, each followed by a call that shows its output'."
    found = []
    for nb in sorted((ROOT / "notebooks" / "api").glob("*.ipynb")):
        if "default_exp" in (text := nb.read_text()) and ".__init__" in text.split("default_exp", 1)[1].split("\\n")[0]:
            continue                                             # a package's map: its re-exports, no code to show
        for i, n, example in export_cells(nb):
            if n > 60: found.append(f"{nb.name}: cell {i}: {n} lines")
            if not example: found.append(f"{nb.name}: cell {i}: no example after it")
    assert found == [], "\n".join(found)
