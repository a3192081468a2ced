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
    first = cli(project, "run", "--engine", "inprocess", fresh=True)  # all rows, as `make run` (same numbers with papermill)
    assert first.returncode == 0, first.stderr
    out = first.stdout.splitlines()
    for prefix in ("metrics (select_model):", "value per customer:", "largest fairness gap:", "model: churn version 1"):
        readme = quoted(prefix)
        assert len(readme) == 1, (prefix, readme)
        assert readme[0] in out, (readme[0], [l for l in out if l.startswith(prefix)])
    assert quoted("built 9 tasks in ")[0].endswith(": 9 executed, 0 skipped") and out[0].endswith(": 9 executed, 0 skipped")
    _show_and_serve_are_what_the_readme_quotes(project)
    set_grid(project, WEAK_GRID)                                  # the walkthrough's edit, literally
    assert WEAK_GRID.strip() in ROOT.joinpath("README.md").read_text().replace("\n          ", "\n          ")
    second = cli(project, "run", "--engine", "inprocess")
    assert second.returncode == 0, second.stderr
    held = quoted("model: churn version 2")
    assert len(held) == 1 and held[0] in second.stdout.splitlines(), (held, second.stdout)


def _show_and_serve_are_what_the_readme_quotes(project):
    "The numbers the README quotes after `make run`: the files `show` verifies, the serving line, the curl answer."
    import json, re, signal, socket, subprocess, time, urllib.request
    from conftest import BIN, clean_env
    text = ROOT.joinpath("README.md").read_text()
    files = re.search(r"verified now: (\d+) files match their sha256", text.replace("\n", " ")).group(1)
    shown = cli(project, "show", "churn")
    assert f"verified now: {files} files match their sha256 manifest" in shown.stdout, shown.stdout
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    server = subprocess.Popen([str(BIN / "mlopsnb"), "serve", "--port", str(port)], cwd=project, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline().strip()
        line = quoted("serving churn version 1 ")[0]
        assert first == line.replace("8000", str(port)).replace("/path/to/project", str(project)), (first, line)
        deadline = time.time() + 60
        while True:
            try: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1); break
            except OSError: assert time.time() < deadline; time.sleep(0.3)
        block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if b.startswith("curl -s -H 'content-type"))
        got = json.loads(subprocess.run(["bash", "-c", block.replace("8000", str(port))], capture_output=True, text=True).stdout)
        want = json.loads(quoted('{"model":"churn","version":"1"')[0])
        for d in (got, want): d.pop("request_id")
        assert abs(got["predictions"][0].pop("probability") - want["predictions"][0].pop("probability")) < 1e-6, got
        assert got == want, (got, want)
    finally:
        server.send_signal(signal.SIGTERM); server.wait(30)
