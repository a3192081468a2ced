"""Benchmark serving the same registered model: `mlflow models serve --env-manager local` vs `mlopsnb serve`.

One run, same machine, same model version (`<model>@champion` of a project built here or given), same
rows, same client: throughput and p50/p99 latency for single-row requests and for 1,000-row batches at
a fixed client concurrency, the ratios mlopsnb / mlflow, and each server's peak RSS (its whole process tree).
Both servers are checked to return the same probabilities (within 1e-6) before anything is timed, and
the timed phases are interleaved (mlflow, mlopsnb, mlflow, mlopsnb, ...) so machine noise hits both.
The client is a small asyncio HTTP/1.1 keep-alive client (pre-encoded requests) so it costs the
server under test as little CPU as possible on a small machine. See bench/README.md.

    .venv/bin/python bench/serve.py [--project DIR] [--sample N] [--concurrency 8] [--batch 1000] [--seconds 10] [--rounds 2] [--log-cost] [--micro-batch] [--baseline DIR] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ["pipeline.yaml", "env.yaml", "notebooks/tasks", "contracts"]
TARGETS = {"single throughput": 20.0, "single p99": 0.1, "batch rows/s": 4.0}   # mlopsnb / mlflow: at least, at most, at least


def clean_env(extra: dict | None = None) -> dict:
    "A user's shell: nothing of MLflow/mlopsnb/Ploomber inherited, telemetry off, the venv's bin first (uvicorn for mlflow)."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPSNB_", "PLOOMBER_")) and k != "VIRTUAL_ENV"}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "MLFLOW_DISABLE_TELEMETRY": "true", "PLOOMBER_STATS_ENABLED": "false",
            "OMP_NUM_THREADS": "1"}
    return {**env, **(extra or {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def build(dest: Path, sample: int | None) -> Path:
    "Copy the reference project into `dest` and build it (in-process engine)."
    from pipeline import make_project        # bench/pipeline.py's copy of the project (this folder is on sys.path)
    make_project(dest)
    args = [str(BIN / "mlopsnb"), "run", "--engine", "inprocess"] + (["--env", f"sample={sample}"] if sample else [])
    r = subprocess.run(args, cwd=dest, env=clean_env(), capture_output=True, text=True)
    if r.returncode: sys.exit(f"build failed:\n{r.stdout}\n{r.stderr}")
    return dest


# --- processes ---------------------------------------------------------------------------------

def tree_rss_kb(pid: int) -> int:
    "Resident memory of a process and all its descendants (kB), from /proc."
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"): total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError): pass
    return total


def tree_cpu_s(pid: int) -> float:
    "CPU seconds (user + system) used so far by a process and all its live descendants, from /proc."
    total, todo, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick        # utime, stime
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError): pass
    return total


class Served:
    "A server process, its port and the peak RSS of its process tree (sampled every 0.1 s)."
    def __init__(self, name: str, argv: list[str], port: int, cwd: Path, env: dict, path: str, body):
        self.name, self.port, self.path, self.body = name, port, path, body
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.peak_kb, self._stop = 0, threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self._stop.wait(0.1): self.peak_kb = max(self.peak_kb, tree_rss_kb(self.proc.pid))

    def wait(self, health: str, timeout: float = 300):
        import urllib.request
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None: sys.exit(f"{self.name} exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{health}", timeout=2) as r:
                    if r.status == 200: return self
            except OSError: pass
            time.sleep(0.5)
        sys.exit(f"{self.name} did not start")

    def stop(self):
        self._stop.set()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait()


# --- a small keep-alive HTTP client ------------------------------------------------------------

def request_bytes(port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _one(reader, writer, req: bytes) -> tuple[int, bytes]:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status, length, chunked = int(head.split(b" ", 2)[1]), None, False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length": length = int(v)
        if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower(): chunked = True
    if length is not None: return status, await reader.readexactly(length)
    if not chunked: raise RuntimeError("response without length")
    body = b""
    while True:
        n = int((await reader.readuntil(b"\r\n")).strip(), 16)
        body += await reader.readexactly(n + 2)
        if n == 0: return status, body[:-2]


async def _load(port: int, reqs: list[bytes], concurrency: int, seconds: float) -> tuple[list[float], int]:
    "Send requests from `concurrency` connections for `seconds`; return latencies (s) and the count of non-200 answers."
    lat, bad, stop_at = [], 0, time.perf_counter() + seconds
    async def worker(k: int):
        nonlocal bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status, _ = await _one(reader, writer, reqs[i % len(reqs)])
            lat.append(time.perf_counter() - t0); bad += status != 200; i += concurrency
        writer.close()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return lat, bad


def load(port, reqs, concurrency, seconds): return asyncio.run(_load(port, reqs, concurrency, seconds))


def post(port: int, path: str, body: bytes) -> tuple[int, dict]:
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try: return await _one(reader, writer, request_bytes(port, path, body))
        finally: writer.close()
    status, data = asyncio.run(go())
    return status, json.loads(data)


# --- the run -----------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", help="a built project to use (default: build a fresh copy here)")
    ap.add_argument("--sample", type=int, help="build on a sample (default: all rows)")
    ap.add_argument("--concurrency", type=int, default=8); ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per timed phase")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (mlflow, mlopsnb) per phase")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--log-cost", action="store_true", help="also time mlopsnb serve --no-log (the prediction log's cost)")
    ap.add_argument("--micro-batch", action="store_true", help="also time mlopsnb serve --micro-batch-ms 2 (adaptive micro-batching)")
    ap.add_argument("--baseline", help="also time `mlopsnb serve` imported from this folder (e.g. an older checkout): the change, side by side")
    ap.add_argument("--with-ids", action="store_true", help="mlopsnb's requests carry the id columns too, and its "
                    "servers a MLOPSNB_LOG_KEY: the prediction log hashes every id (its costliest work per row)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        project = Path(a.project).resolve() if a.project else build(tmp / "project", a.sample)
        return run(a, project)
    finally: shutil.rmtree(tmp, ignore_errors=True)


def run(a, project: Path) -> int:
    import numpy as np
    from mlopsnb.config import Project
    from mlopsnb.data import read_source
    p = Project.load(project)
    cfg = p.env.data
    raw = read_source(cfg, project).drop(columns=[cfg.target, *cfg.ids])
    rows = json.loads(raw.head(max(a.batch, 200)).to_json(orient="records"))
    full = read_source(cfg, project).drop(columns=[cfg.target]).head(max(a.batch, 200))
    twin = {id(r): w for r, w in zip(rows, json.loads(full.to_json(orient="records")))}   # each record with its ids
    key = {"MLOPSNB_LOG_KEY": "bench key: sixteen bytes or more"} if a.with_ids else {}
    name = p.env.model_name
    uri = p.store.tracking_uri
    pm, pl = free_port(), free_port()
    mlflow_body = lambda rs: json.dumps({"dataframe_records": rs}).encode()
    ours_body = lambda rs: json.dumps([twin[id(r)] for r in rs] if a.with_ids else rs).encode()   # (with their ids)
    servers = [
        Served("mlflow", [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local",
                          "--host", "127.0.0.1", "--port", str(pm)], pm, project, clean_env({"MLFLOW_TRACKING_URI": uri}),
               "/invocations", mlflow_body),
        Served("mlopsnb", [str(BIN / "mlopsnb"), "serve", "--port", str(pl), "--reload-interval", "0", "--log", str(project / "bench-predictions.db")],
               pl, project, clean_env(key), "/predict", ours_body),
    ]
    if a.log_cost:   # the same service without its prediction log: what logging costs
        pn = free_port()
        servers.append(Served("mlopsnb-nolog", [str(BIN / "mlopsnb"), "serve", "--port", str(pn), "--reload-interval", "0", "--no-log"],
                              pn, project, clean_env(), "/predict", ours_body))
    if a.baseline:   # the same command and defaults, another version of the library
        pbase = free_port()
        servers.append(Served("mlopsnb-base", [str(BIN / "mlopsnb"), "serve", "--port", str(pbase),
                                               "--reload-interval", "0", "--log", str(project / "bench-predictions-base.db")], pbase, project,
                              clean_env({"PYTHONPATH": str(Path(a.baseline).resolve()), **key}), "/predict", ours_body))
    if a.micro_batch:   # the same service, concurrent single-row requests scored together (waiting at most 2 ms)
        pb = free_port()
        servers.append(Served("mlopsnb-mb", [str(BIN / "mlopsnb"), "serve", "--port", str(pb), "--reload-interval", "0", "--micro-batch-ms", "2",
                                             "--log", str(project / "bench-predictions-mb.db")], pb, project,
                              clean_env(key), "/predict", ours_body))
    try:
        servers[0].wait("/ping")
        for s in servers[1:]: s.wait("/ready")
        # correctness first: the same probabilities for the same batch
        sm, om = post(pm, "/invocations", mlflow_body(rows[: a.batch])), post(pl, "/predict", ours_body(rows[: a.batch]))
        if sm[0] != 200 or om[0] != 200: sys.exit(f"a server refused the check batch: mlflow {sm[0]} {str(sm[1])[:300]}, mlopsnb {om[0]} {str(om[1])[:300]}")
        pm_prob = np.array([r[1] if isinstance(r, list) else r["1"] for r in sm[1]["predictions"]], dtype=float)
        po_prob = np.array([r["probability"] for r in om[1]["predictions"]])
        diff = float(np.abs(pm_prob - po_prob).max())
        print(f"check: {a.batch} rows, max |mlflow - mlopsnb| probability difference {diff:.2e}; mlopsnb path {om[1]['path']}, version {om[1]['version']}")
        if diff > 1e-6: sys.exit("the servers disagree: not timing")
        res = {s.name: {"single": ([], 0), "batch": ([], 0)} for s in servers}
        cpu = {s.name: {"single": 0.0, "batch": 0.0} for s in servers}    # the server's CPU seconds in the timed phases
        for phase in ("single", "batch"):
            for rnd in range(a.rounds):
                for s in servers:
                    reqs = ([request_bytes(s.port, s.path, s.body([r])) for r in rows[:200]] if phase == "single"
                            else [request_bytes(s.port, s.path, s.body(rows[: a.batch]))])
                    load(s.port, reqs[:20], a.concurrency, 1.0)                      # warm-up, untimed
                    c0 = tree_cpu_s(s.proc.pid)
                    lat, bad = load(s.port, reqs, a.concurrency, a.seconds)
                    cpu[s.name][phase] += tree_cpu_s(s.proc.pid) - c0
                    if bad: sys.exit(f"{s.name}: {bad} non-200 answers in the {phase} phase")
                    res[s.name][phase] = (res[s.name][phase][0] + lat, 0)
                    print(f"  round {rnd + 1} {phase:<6} {s.name:<8} {len(lat) / a.seconds:8.1f} req/s", flush=True)
    finally:
        for s in servers: s.stop()
    out = {}
    for s in servers:
        for phase in ("single", "batch"):
            lat = sorted(res[s.name][phase][0]); secs = a.seconds * a.rounds
            rps = len(lat) / secs
            out[f"{s.name} {phase}"] = {"requests": len(lat), "req_per_s": rps, "rows_per_s": rps * (1 if phase == "single" else a.batch),
                                        "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                                        "cpu_ms_per_req": 1000 * cpu[s.name][phase] / max(1, len(lat))}
        out[f"{s.name} peak_rss_mb"] = s.peak_kb / 1024
    ratios = {"single throughput": out["mlopsnb single"]["req_per_s"] / out["mlflow single"]["req_per_s"],
              "single p99": out["mlopsnb single"]["p99_ms"] / out["mlflow single"]["p99_ms"],
              "batch rows/s": out["mlopsnb batch"]["rows_per_s"] / out["mlflow batch"]["rows_per_s"],
              "single CPU/request": out["mlopsnb single"]["cpu_ms_per_req"] / out["mlflow single"]["cpu_ms_per_req"],
              "batch CPU/request": out["mlopsnb batch"]["cpu_ms_per_req"] / out["mlflow batch"]["cpu_ms_per_req"]}
    print(f"\n{'variant':<16} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10}")
    for k, v in out.items():
        if isinstance(v, dict): print(f"{k:<16} {v['req_per_s']:>9.1f} {v['rows_per_s']:>10.0f} {v['p50_ms']:>8.2f} {v['p99_ms']:>8.2f} {v['cpu_ms_per_req']:>10.2f}")
    print("peak RSS: " + ", ".join(f"{s.name} {out[s.name + ' peak_rss_mb']:.0f} MB" for s in servers))
    if a.micro_batch:
        ratios |= {"micro-batch single": out["mlopsnb-mb single"]["req_per_s"] / out["mlopsnb single"]["req_per_s"],
                   "micro-batch single p99": out["mlopsnb-mb single"]["p99_ms"] / out["mlopsnb single"]["p99_ms"]}
    if a.baseline:
        ratios |= {"vs baseline single": out["mlopsnb single"]["req_per_s"] / out["mlopsnb-base single"]["req_per_s"],
                   "vs baseline batch": out["mlopsnb batch"]["rows_per_s"] / out["mlopsnb-base batch"]["rows_per_s"]}
    if a.log_cost:
        ratios |= {"log cost single": out["mlopsnb single"]["req_per_s"] / out["mlopsnb-nolog single"]["req_per_s"],
                   "log cost batch": out["mlopsnb batch"]["rows_per_s"] / out["mlopsnb-nolog batch"]["rows_per_s"]}
    print(f"\n{'ratio mlopsnb / mlflow':<24} {'value':>8} {'target':>8}")
    for k, v in ratios.items():
        if k not in TARGETS:
            why = "with log / without" if k.startswith("log") else "this checkout / --baseline" if "baseline" in k else "server CPU time, mlopsnb / mlflow: load-independent" if "CPU" in k else "micro-batching on / off"
            print(f"{k:<24} {v:>8.2f}  ({why})"); continue
        ok = v <= TARGETS[k] if k == "single p99" else v >= TARGETS[k]
        print(f"{k:<24} {v:>8.2f} {('<= ' if k == 'single p99' else '>= ') + str(TARGETS[k]):>8}  {'pass' if ok else 'FAIL'}")
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "processor": platform.processor() or platform.machine(), "load_average": os.getloadavg()}
    print(f"machine: {machine['cpus']} CPUs, load average {machine['load_average'][0]:.1f} at the end, {machine['platform']}, Python {machine['python']}; concurrency {a.concurrency}, "
          f"{a.seconds:g}s x {a.rounds} rounds per phase, batch {a.batch} rows")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"when": datetime.datetime.now(datetime.timezone.utc).isoformat(), "machine": machine,
                                            "args": vars(a), "check_max_diff": diff, "results": out, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
