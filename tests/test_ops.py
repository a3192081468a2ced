"""Operations: killed writers, a shared SQLite store under parallel writers, the MLflow UI, self-contained HTML, Jupyter extensions."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, clean_env

WRITER = """
import sys, time
from pathlib import Path
from mlopsnb.core import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "w") as f:
        f.write("half of it"); f.flush()
        print(tmp, flush=True)
        time.sleep(120)
        f.write("the rest")
"""


def start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    "Start a process writing `target` through atomic_path; return it and its temporary file once it is mid-write."
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env=clean_env({"PYTHONPATH": str(ROOT)}))
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file() and tmp.parent == target.parent, tmp
    return proc, tmp


def test_a_writer_killed_mid_write_leaves_a_temporary_that_only_cleaning_removes(tmp_path):
    from mlopsnb.core import clean_stale_temp
    killed, killed_tmp = start_writer(tmp_path / "products" / "data.parquet")
    alive, alive_tmp = start_writer(tmp_path / "products" / "deep" / "model.skops")
    try:
        killed.send_signal(signal.SIGKILL); killed.wait()
        assert not (tmp_path / "products" / "data.parquet").exists()     # never a half-written product
        assert killed_tmp.read_text() == "half of it"                    # but a leftover
        assert clean_stale_temp(tmp_path) == [killed_tmp]
        assert not killed_tmp.exists()
        assert alive_tmp.read_text() == "half of it"                     # the live writer's file is untouched
        assert clean_stale_temp(tmp_path, max_age=0) == []
    finally:
        alive.kill(); alive.wait()
    assert clean_stale_temp(tmp_path) == [alive_tmp]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "products"]
