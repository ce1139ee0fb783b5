"""Kill Dask workers during ``score A B C --workers 2`` runs; check nothing is lost.

Each run starts the real command line on three synthetic volumes and SIGKILLs one worker
process at a chosen point: while the cluster starts, before any volume is done, after the
first, after the second (while the last is scored), each time the idle worker (it holds
finished results), the busy one or either. Runs alternate between a fresh output folder
and the folder of the previous run with two of its sets made incomplete as a killed run
leaves them (summary gone, a table from another run, residual gone with a temporary file
left): the complete one must be skipped, the other two scored again. While a run goes
on, the output folder is watched: a volume whose output set was complete once (summary
present and matching its files) must stay complete.

A run passes when it exits 0 with every volume's set complete, or exits non-zero and
names exactly the volumes without a complete set; and no complete set was ever lost.
Prints ONE JSON object (every run, and the counts) and exits 1 if a run failed::

    python scripts/kill_worker_check.py --runs 10 [--slices 4] [--out /tmp/killcheck]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "sample_data" / "anogan_small.pt"
NAMES = ("a", "b", "c")
#: (finished volumes to wait for before the kill, -1: none, as soon as the workers start;
#: which worker to kill)
PLAN = [
    (0, "busy"),
    (1, "idle"),
    (2, "idle"),
    (1, "busy"),
    (2, "busy"),
    (0, "any"),
    (2, "idle"),
    (1, "idle"),
    (2, "any"),
    (1, "any"),
    (-1, "any"),  # while the cluster starts
]


def make_volumes(folder: Path, slices: int) -> list[Path]:
    from napari_anogan.datasets.synthetic import make_volume
    from napari_anogan.io import write_tiff

    paths = []
    for i, name in enumerate(NAMES):
        syn = make_volume(slices, 200, 256, lesions=["irf"] if i == 1 else None, seed=60 + i)
        paths.append(write_tiff(folder / f"{name}.ome.tif", syn.data, spacing=syn.spacing))
    return paths


def complete_sets(out: Path) -> set[str]:
    from napari_anogan.pipeline.output_set import verify_output_set

    return {n for n in NAMES if not verify_output_set(out / f"{n}_summary.json")}


def workers_of(pid: int) -> list:
    """The Dask worker processes under the command (not the resource tracker)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in cmd and "python" in cmd.lower():
            found.append(child)
    return found


def pick_worker(pid: int, which: str, rng: np.random.Generator):
    """The worker to kill: the busiest, the idlest (by CPU over 0.5 s) or either."""
    import psutil

    workers = workers_of(pid)
    if not workers:
        return None
    usage = {}
    for w in workers:
        with contextlib.suppress(psutil.Error):
            w.cpu_percent(None)
    time.sleep(0.5)
    for w in workers:
        try:
            usage[w.pid] = w.cpu_percent(None)
        except psutil.Error:
            usage[w.pid] = 0.0
    ranked = sorted(workers, key=lambda w: usage[w.pid])
    if which == "idle":
        return ranked[0]
    if which == "busy":
        return ranked[-1]
    return ranked[int(rng.integers(0, len(ranked)))]


def damage(out: Path, names: list[str], rng: np.random.Generator) -> list[str]:
    """Make these volumes' sets incomplete, as a killed run would leave them."""
    done = []
    for name in names:
        how = int(rng.integers(0, 3))
        if how == 0:
            (out / f"{name}_summary.json").unlink(missing_ok=True)
        elif how == 1:  # a table from another run beside the summary
            with open(out / f"{name}_scores.csv", "a") as fh:
                fh.write("0,0,0,0,0,0,0,0,0,0,0,0\n")
        else:
            (out / f".tmp-{name}_residual-k1ll3d.tif").write_bytes(b"half")
            (out / f"{name}_residual.tif").unlink(missing_ok=True)
        done.append(f"{name}: {['summary removed', 'table changed', 'residual removed'][how]}")
    return done


def one_run(inputs: list[Path], out: Path, after: int, which: str, rng) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    code = "import sys; from napari_anogan.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code, "score", *map(str, inputs), "-m", str(MODEL)]
    cmd += ["-o", str(out), "--workers", "2", "--device", "cpu", "-q"]
    before = complete_sets(out) if out.exists() else set()
    wait = after == 0
    if after >= 0:
        after += len(before)  # the skipped volumes are reported first
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines: list[str] = []
    done = threading.Event()
    seen: set[str] = set(before)
    lost: set[str] = set()

    def read_stdout() -> None:
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip())

    def watch() -> None:
        while not done.is_set():
            if out.exists():
                now = complete_sets(out)
                lost.update(seen - now)
                seen.update(now)
            time.sleep(0.2)

    reader = threading.Thread(target=read_stdout, daemon=True)
    watcher = threading.Thread(target=watch, daemon=True)
    reader.start()
    watcher.start()
    killed = None
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        finished = sum(1 for line in lines if line.startswith("["))
        started = bool(workers_of(proc.pid))
        if killed is None and started and finished >= after:
            if wait:
                time.sleep(float(rng.uniform(2, 6)))  # while the first volumes are scored
            victim = pick_worker(proc.pid, which, rng)
            if victim is not None:
                killed = {"pid": victim.pid, "after_finished": finished, "worker": which}
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                except ProcessLookupError:
                    killed["note"] = "already gone"
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    rc = proc.wait()
    reader.join(5)
    done.set()
    watcher.join(5)
    stderr = proc.stderr.read().decode(errors="replace")
    final = complete_sets(out)
    lost.update(seen - final)
    missing = sorted(set(NAMES) - final)
    named = []
    for line in stderr.splitlines():
        if "have no complete outputs" in line:
            named = sorted(n.strip() for n in line.rsplit(":", 1)[1].split(","))
    ok = not lost and ((rc == 0 and not missing) or (rc != 0 and named == missing))
    return {
        "rc": rc,
        "killed": killed,
        "complete_before": sorted(before),
        "complete_after": sorted(final),
        "named_missing": named,
        "lost_complete_sets": sorted(lost),
        "stdout": lines,
        "stderr_tail": stderr.strip().splitlines()[-3:],
        "ok": ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--slices", type=int, default=12, help="B-scans per volume")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    work = args.out or Path(tempfile.mkdtemp(prefix="killcheck-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = make_volumes(work, args.slices)
    runs = []
    t0 = time.perf_counter()
    out = work / "out-0"
    for i in range(args.runs):
        after, which = PLAN[i % len(PLAN)]
        damaged: list[str] = []
        if i % 2 == 0:  # a fresh folder
            out = work / f"out-{i}"
        else:  # the previous run's folder with two sets made incomplete: scored again
            names = [str(n) for n in rng.choice(NAMES, 2, replace=False)]
            damaged = damage(out, names, rng)
            after = min(after, 1)
        result = one_run(inputs, out, after, which, rng)
        result.update(
            run=i, folder=out.name, damaged=damaged, plan={"after": after, "worker": which}
        )
        runs.append(result)
        print(
            f"run {i}: rc {result['rc']}, killed {result['killed']}, complete "
            f"{result['complete_after']}, ok {result['ok']}",
            file=sys.stderr,
            flush=True,
        )
    report = {
        "command": "napari-anogan score a b c -m sample_data/anogan_small.pt -o OUT --workers 2",
        "slices": args.slices,
        "runs": len(runs),
        "ok": sum(r["ok"] for r in runs),
        "exit_0_all_complete": sum(r["rc"] == 0 and r["ok"] for r in runs),
        "exit_nonzero_named_missing": sum(r["rc"] != 0 and r["ok"] for r in runs),
        "lost_complete_sets": sum(bool(r["lost_complete_sets"]) for r in runs),
        "seconds": round(time.perf_counter() - t0, 1),
        "details": runs,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
