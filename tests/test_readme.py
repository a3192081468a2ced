"""The README's quoted outputs are the real ones: the reference build on all rows, then the walkthrough."""
import pytest

from conftest import ROOT, cli, make_project, set_grid

pytestmark = pytest.mark.slow
WEAK_GRID = "        - family: logistic_regression\n          C: [0.0003]\n"


def quoted(prefix: str) -> list[str]:
    "The README lines, inside its code blocks, that start with `prefix`."
    out, inside = [], False
    for line in ROOT.joinpath("README.md").read_text().splitlines():
        if line.startswith("```"): inside = not inside
        elif inside and line.startswith(prefix): out.append(line)
    return out


def test_readme_build_summary_and_walkthrough_are_what_a_build_prints(tmp_path):
    project = make_project(tmp_path / "p")
    first = cli(project, "run", "--engine", "inprocess")          # all rows, as `make run` (same numbers with papermill)
    assert first.returncode == 0, first.stderr
    out = first.stdout.splitlines()
    for prefix in ("metrics (select_model):", "value per customer:", "largest fairness gap:", "model: churn version 1"):
        readme = quoted(prefix)
        assert len(readme) == 1, (prefix, readme)
        assert readme[0] in out, (readme[0], [l for l in out if l.startswith(prefix)])
    assert quoted("built 9 tasks in ")[0].endswith(": 9 executed, 0 skipped") and out[0].endswith(": 9 executed, 0 skipped")
    set_grid(project, WEAK_GRID)                                  # the walkthrough's edit, literally
    assert WEAK_GRID.strip() in ROOT.joinpath("README.md").read_text().replace("\n          ", "\n          ")
    second = cli(project, "run", "--engine", "inprocess")
    assert second.returncode == 0, second.stderr
    held = quoted("model: churn version 2")
    assert len(held) == 1 and held[0] in second.stdout.splitlines(), (held, second.stdout)
