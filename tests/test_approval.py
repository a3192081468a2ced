"""Human approval (`require_approval: true`): a passing model awaits a person; `approve` and `reject` as README's "Approval"."""
import json
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import FAST, ROOT, cli, make_project, store

pytestmark = pytest.mark.slow
POLICY = "        require_approval: false"


def approval_section() -> str:
    return ROOT.joinpath("README.md").read_text().split("\n## Approval\n", 1)[1].split("\n## ", 1)[0]


def readme_command(verb: str) -> list[str]:
    "The README's `mlopsnb <verb>` line of its Approval section, as a shell splits it (comment dropped)."
    lines = [l for l in approval_section().splitlines() if l.startswith(f".venv/bin/mlopsnb {verb} ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0], comments=True)[1:]


def one_error(r) -> str:
    "The one error line of a failed command (exit 1, no traceback)."
    errors = [l for l in r.stderr.splitlines() if l.startswith("mlopsnb: error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    return errors[0]


def aliases(project: Path) -> dict:
    return {k: str(v) for k, v in store(project).get_registered_model("churn").aliases.items()}


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "The reference project with `require_approval: true` (committed: the clean-commit gate passes), built once."
    project = make_project(tmp_path_factory.mktemp("approval") / "p")
    spec = project / "pipeline.yaml"
    assert spec.read_text().count(POLICY) == 1
    spec.write_text(spec.read_text().replace(POLICY, "        require_approval: true"))
    git(project, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "require approval")
    r = cli(project, "run", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    return project, r


def test_a_model_that_passes_every_gate_awaits_approval_as_challenger(built):
    project, r = built
    quoted = re.search(r"`(model: churn version 1 @challenger \(awaiting approval: [^`]*)`", approval_section()).group(1)
    assert quoted in r.stdout.splitlines(), r.stdout
    assert aliases(project) == {"challenger": "1"}
    decision = json.loads((project / "products/promotion/decision.json").read_text())
    assert (decision["promoted"], decision["awaiting_approval"]) == (False, True)
    h = cli(project, "history", "churn", "--alias", "champion")
    assert re.search(r"champion\s+kept - \(v1\)\s+awaiting\s+promote_model: all 7 gates passed", h.stdout), h.stdout
    shown = cli(project, "show", "churn/1", "--no-verify").stdout
    assert "decision  awaiting approval: promote_model: all 7 gates passed" in shown, shown
    assert 'approval  awaiting approval: mlopsnb approve churn/1 --note "..."' in shown, shown
    card = cli(project, "show", "churn/1", "--card").stdout
    assert "Promotion decision: awaiting approval: promote_model: all 7 gates passed" in card, card[-500:]


def test_approve_refuses_in_one_line_and_moves_nothing(built):
    project, _ = built
    assert "a note is required" in one_error(cli(project, "approve", "churn/1"))
    assert "a note is required" in one_error(cli(project, "reject", "churn/1", "--note", " "))
    assert one_error(cli(project, "approve", "churn/9", "--note", "x")) == "mlopsnb: error: model 'churn' has no version 9"
    assert "'nobody' has no version 1" in one_error(cli(project, "approve", "nobody/1", "--note", "x"))
    assert "churn/x" in one_error(cli(project, "approve", "churn/x", "--note", "x"))
    # a tampered version: its files no longer match the sha256 manifest it was registered with
    source = store(project).get_model_version("churn", "1").source
    skops = Path(unquote(urlparse(source).path)) / "model.skops"
    good = skops.read_bytes()
    skops.write_bytes(good[:-1])
    try:
        line = one_error(cli(project, "approve", "churn/1", "--note", "x"))
        assert "model.skops does not match its sha256 manifest; @champion not moved" in line, line
    finally: skops.write_bytes(good)
    # the gates no longer pass: the policy was raised since the build
    spec = project / "pipeline.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("minimums: {roc_auc: 0.80,", "minimums: {roc_auc: 0.999,"))
    try:
        line = one_error(cli(project, "approve", "churn/1", "--note", "x"))
        assert ("model churn version 1 not approved: its gates no longer pass against the current champion (none): "
                "gate 'min roc_auc' failed") in line, line
    finally: spec.write_text(text)
    assert aliases(project) == {"challenger": "1"}
    shown = cli(project, "show", "churn/1", "--no-verify").stdout
    assert "decision  awaiting approval" in shown, shown            # still awaiting: nothing recorded but the refusal


def test_reject_records_who_when_and_the_note_and_clears_the_challenger(built):
    project, _ = built
    git(project, "config", "user.email", "reviewer@example.com")     # no MLOPSNB_USER: the project's git user
    args = readme_command("reject")
    assert args[1] == "churn/1"
    r = cli(project, *args)
    note = args[args.index("--note") + 1]
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"churn version 1 rejected by reviewer@example.com: {note}; @challenger cleared\n"
    assert aliases(project) == {}
    h = cli(project, "history", "churn").stdout.splitlines()
    assert "rejected" in h[-2] and "reviewer@example.com"[:10] in h[-2] and "kept - (v1)" in h[-2], h
    assert "cleared" in h[-1] and "challenger 1->-" in " ".join(h[-1].split()), h
    shown = cli(project, "show", "churn/1", "--no-verify").stdout
    assert f"decision  rejected: rejected by reviewer@example.com: {note}" in shown, shown
    assert re.search(rf"approval  rejected by reviewer@example.com at 20\d\d-\S+: {re.escape(note)}", shown), shown
    card = cli(project, "show", "churn/1", "--card").stdout
    assert card.count("Promotion decision: ") == 1 and f"Approval: rejected by reviewer@example.com at " in card
    for verb in ("approve", "reject"):
        line = one_error(cli(project, verb, "churn/1", "--note", "again"))
        assert "model churn version 1 is not awaiting approval: already rejected by reviewer@example.com" in line


def test_approve_moves_the_champion_and_records_the_reviewer(built):
    project, _ = built
    r = cli(project, "run", *FAST, "--env", "sample=700")           # more rows: another model, version 2
    assert r.returncode == 0, r.stdout + r.stderr
    assert "model: churn version 2 @challenger (awaiting approval: promote_model: all 7 gates passed)" in r.stdout, r.stdout
    args = readme_command("approve")
    assert args[1] == "churn/2"
    note = args[args.index("--note") + 1]
    done = cli(project, *args, env={"MLOPSNB_USER": "risk-lead"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"churn version 2 is now @champion (approved by risk-lead: {note})"
    assert all(l.startswith("  pass ") for l in done.stdout.splitlines()[:-1]), done.stdout
    assert aliases(project) == {"challenger": "2", "champion": "2"}
    h = cli(project, "history", "churn", "--alias", "champion").stdout.splitlines()
    assert re.search(r"risk-lead\s+champion\s+-->2\s+approved\s+approved by risk-lead: ", h[-1]), h
    shown = cli(project, "show", "churn").stdout
    assert "churn version 2 @challenger @champion" in shown and "decision  promoted: approved by risk-lead: " in shown
    assert re.search(rf"approval  approved by risk-lead at 20\d\d-\S+: {re.escape(note)}", shown), shown
    assert re.search(r"verified now: \d+ files match", shown), shown
    card = cli(project, "show", "churn", "--card").stdout
    assert f"Approval: approved by risk-lead at " in card and card.count("Promotion decision: promoted") == 1, card[-400:]
    line = one_error(cli(project, "approve", "churn/2", "--note", "again"))
    assert "is not awaiting approval: already approved by risk-lead" in line, line
    line = one_error(cli(project, "approve", "churn", "--note", "x"))       # a bare name: @champion, version 2
    assert "model churn version 2 is not awaiting approval: already approved" in line, line
