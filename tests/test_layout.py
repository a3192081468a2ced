"""The layout issue 18 asks for, checked from the source: no import cycles between mlopsnb modules and no private
name imported across them. `bench/import_cycles.py` draws the import graph (module- and function-level imports)."""
import ast
import subprocess
import sys
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
