"""Peak memory (RSS) of ``napari-anogan score`` on big volumes, on CPU. Prints one JSON object.

Each case: a synthetic volume (:func:`napari_anogan.datasets.synthetic.make_volume`) is written as
an OME-TIFF (in its own process), then ``napari-anogan score`` runs on it with the
bundled model in a fresh process started by a small "meter" process, which reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` of the scoring process alone.

Usage::

    python benchmarks/bench_memory.py [--mapping iterative --steps 5] [--cases NAME,...]
        [--chunk-slices 16]

``score`` reads the volume lazily and processes ``--chunk-slices`` B-scans at a time
(preprocessing in about 8 MiB chunks of float images), so the peak should not grow with
the number of B-scans; ``--chunk-slices 0`` scores the whole volume at once.

The bundled model has no encoder, so ``encoder`` needs another model (``--model``);
with it, ``hybrid`` falls back to the iterative search. The number of mapping steps
changes the time, not the memory (patches are mapped in batches of ``--batch-size``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "sample_data" / "anogan_small.pt"
TARGET_MB = 2048

#: name -> (slices, depth rows, width columns)
CASES = {
    "spectralis_49x496x1024": (49, 496, 1024),
    "cirrus_200x1024x200": (200, 1024, 200),
}

_MAKE = """
import sys
from napari_anogan.io import write_tiff
from napari_anogan.datasets.synthetic import make_volume
s, h, w = (int(x) for x in sys.argv[2:5])
v = make_volume(n_slices=s, height=h, width=w, seed=0)
write_tiff(sys.argv[1], v.data, spacing=v.spacing)
"""

_METER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
rc, err = p.returncode, p.stderr
wall = time.perf_counter() - t
kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
out = {"rc": rc, "stderr": err.decode(errors="replace")[-300:]}
out.update(peak_rss_mb=round(kb / 1024, 1), wall_s=round(wall, 1))
print(json.dumps(out))
"""


def _case(name: str, shape: tuple[int, int, int], args: argparse.Namespace, tmp: Path) -> dict:
    src = tmp / f"{name}.ome.tif"
    subprocess.run([sys.executable, "-c", _MAKE, str(src), *map(str, shape)], check=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    score = [
        sys.executable,
        "-c",
        "import sys; from napari_anogan.cli import main; sys.exit(main())",
        "-q",
        "score",
        str(src),
        "-m",
        str(args.model),
        "-o",
        str(tmp / f"out_{name}"),
        "--mapping",
        args.mapping,
        "--steps",
        str(args.steps),
        "--device",
        "cpu",
        "--chunk-slices",
        str(args.chunk_slices),
    ]
    out = subprocess.run(
        [sys.executable, "-c", _METER, *score], env=env, capture_output=True, text=True, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["stderr"]:
        del res["stderr"]
    res.update(
        shape=list(shape),
        input_mb=round(src.stat().st_size / 2**20, 1),
        under_target=res["peak_rss_mb"] < TARGET_MB,
    )
    src.unlink()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mapping", default="iterative", choices=("encoder", "hybrid", "iterative")
    )
    parser.add_argument("--steps", type=int, default=5, help="mapping steps (memory-neutral)")
    parser.add_argument("--model", default=str(MODEL), help="checkpoint (default: bundled)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--chunk-slices", type=int, default=16, help="score --chunk-slices")
    args = parser.parse_args()
    results = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        for name in args.cases.split(","):
            results[name] = _case(name, CASES[name], args, Path(tmp))
    print(
        json.dumps(
            {
                "benchmark": "peak RSS of napari-anogan score on CPU",
                "model": args.model,
                "mapping": args.mapping,
                "steps": args.steps,
                "chunk_slices": args.chunk_slices,
                "target_mb": TARGET_MB,
                "cases": results,
                "total_s": round(time.perf_counter() - t0, 1),
                "cpu_count": os.cpu_count(),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
