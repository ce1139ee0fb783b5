"""The mapping benchmarks on a CUDA GPU: throughput of every mode, AMP on and off, GFLOP/s.

Run where a CUDA device exists; elsewhere it prints ``{"skipped": ..., "reason": ...}``
and exits 0. Prints ONE JSON object with the device name and, for the same model and
patches (as ``bench_mapping.py``):

``per_patch_loop_pps``, ``batched_iterative_pps``, ``hybrid_pps``, ``encoder_pps``
    Patches per second (iterative ones at the paper's 500 steps: the search is timed at
    ``--steps`` and twice as many, a step's cost times 500 plus the fixed cost per patch),
    with mixed precision (the library's CUDA default).
``batched_iterative_fp32_pps``
    The batched search with ``amp=False`` (float32 / TF32 as torch is configured).
``mapping_gflops``, ``matmul_gflops``, ``matmul_bf16_gflops``
    Search FLOPs per second (AMP) next to large float32 and bf16 matrix products.
``hybrid_agreement``
    Largest |A_gpu - A_cpu| / A_cpu over a few patches for the hybrid mode: mixed
    precision in the search only changes where z lands slightly; scores are float32.
``compiled_iterative_pps``, ``compile_first_run_s`` (``--compile``)
    The same with ``torch.compile``.

    python benchmarks/bench_gpu.py --model results/anogan_small_v1.pt --preset paper
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mapping import PAPER_STEPS, load_model, step_flops, test_patches

from napari_anogan.events import drain
from napari_anogan.mapping import MappingConfig, map_to_latent


def timed(fn, repeat: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def per_patch_loop(g, d, x, steps: int, device: torch.device) -> None:
    """Batch size 1, torch.optim.Adam, float32 (the public re-implementations' way)."""
    gen = torch.Generator().manual_seed(0)
    for i in range(len(x)):
        xi = torch.from_numpy(x[i : i + 1]).to(device)
        with torch.no_grad():
            fx = d.features(xi)
        z0 = torch.rand(1, g.config.z_dim, generator=gen) * 2 - 1
        z = z0.to(device).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            gz = g(z)
            loss = 0.9 * (xi - gz).abs().sum() + 0.1 * (fx - d.features(gz)).abs().sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.clamp_(-1, 1)


def matmul(device: torch.device, dtype: torch.dtype, size: int = 8192, repeat: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    return 2 * size**3 / timed(lambda: a @ b, repeat, device) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="results/anogan_small_v1.pt")
    parser.add_argument("--preset", default="paper", help="random model if --model is absent")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=50, help="timed steps, batched search")
    parser.add_argument("--loop-patches", type=int, default=4)
    parser.add_argument("--loop-steps", type=int, default=50)
    parser.add_argument("--n-patches", type=int, default=8192, help="hybrid/encoder patches")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="smoke-test the script on the CPU (tiny sizes)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        if not args.allow_cpu:
            print(
                json.dumps(
                    {
                        "skipped": True,
                        "reason": "no CUDA device (torch.cuda.is_available() is False)",
                        "torch": torch.__version__,
                        "machine": platform.node(),
                    }
                )
            )
            return
        device = torch.device("cpu")
    g, d, e, pre, model_path = load_model(args.model, args.preset)
    g, d, e = (m.to(device).eval().requires_grad_(False) for m in (g, d, e))
    x = test_patches(pre, max(args.batch_size, args.n_patches), seed=7)
    xb = x[: args.batch_size]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()

    loop_t = timed(
        lambda: per_patch_loop(g, d, x[: args.loop_patches], args.loop_steps, device),
        args.repeat,
        device,
    )
    loop_step_s = loop_t / (args.loop_patches * args.loop_steps)

    def batched(amp: bool, compile_: bool = False, steps: int = args.steps) -> None:
        cfg = MappingConfig(
            steps=steps,
            early_stop=False,
            batch_size=args.batch_size,
            device=str(device),
            keep_images=False,
            amp=amp,
            compile=compile_,
        )
        drain(map_to_latent(g, d, xb, cfg))

    def per_patch_step(amp: bool) -> tuple[float, float]:
        """Seconds per patch-step (from ``steps`` and ``2 * steps``) and fixed s per patch."""
        t1 = timed(lambda: batched(amp), args.repeat, device)
        t2 = timed(lambda: batched(amp, steps=2 * args.steps), args.repeat, device)
        step = (t2 - t1) / (len(xb) * args.steps)
        return step, max(0.0, t1 / len(xb) - args.steps * step)

    amp_step_s, amp_fixed_s = per_patch_step(True)
    fp32_step_s, fp32_fixed_s = per_patch_step(False)

    def mode_run(mode: str, patches: np.ndarray, dev: torch.device):
        cfg = MappingConfig(
            mode=mode, batch_size=args.batch_size, device=str(dev), keep_images=False
        )
        return drain(map_to_latent(g, d, patches, cfg, encoder=e))

    n = args.n_patches
    hybrid_t = timed(lambda: mode_run("hybrid", x[:n], device), args.repeat, device)
    encoder_t = timed(lambda: mode_run("encoder", x[:n], device), args.repeat, device)
    flops = step_flops(g.cpu(), d.cpu(), 64) / 64
    g.to(device)
    d.to(device)
    few = x[:64]
    on_dev = mode_run("hybrid", few, device).anomaly_score
    on_cpu = mode_run("hybrid", few, torch.device("cpu")).anomaly_score
    result = {
        "device": str(device),
        "device_name": name,
        "per_patch_loop_pps": 1.0 / (loop_step_s * PAPER_STEPS),
        "batched_iterative_pps": 1.0 / (amp_fixed_s + amp_step_s * PAPER_STEPS),
        "batched_iterative_fp32_pps": 1.0 / (fp32_fixed_s + fp32_step_s * PAPER_STEPS),
        "hybrid_pps": n / hybrid_t,
        "encoder_pps": n / encoder_t,
        "mapping_gflops": flops / amp_step_s / 1e9,
        "mapping_fp32_gflops": flops / fp32_step_s / 1e9,
        "matmul_gflops": matmul(device, torch.float32, 8192 if device.type == "cuda" else 1024),
        "hybrid_agreement": float(np.max(np.abs(on_dev - on_cpu) / np.abs(on_cpu))),
    }
    if device.type == "cuda":
        result["matmul_bf16_gflops"] = matmul(device, torch.bfloat16)
        result["amp_dtype"] = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.compile:
        start = time.perf_counter()
        batched(True, compile_=True)
        result["compile_first_run_s"] = time.perf_counter() - start
        t = timed(lambda: batched(True, compile_=True), args.repeat, device)
        result["compiled_iterative_pps"] = len(xb) / t * args.steps / PAPER_STEPS
    result["batched_vs_loop"] = result["batched_iterative_pps"] / result["per_patch_loop_pps"]
    result["hybrid_vs_iterative500"] = result["hybrid_pps"] / result["batched_iterative_pps"]
    result.update(
        {
            "model": model_path or f"random {args.preset}",
            "preset": g.config.preset,
            "batch_size": args.batch_size,
            "timed_steps": args.steps,
            "n_patches_modes": n,
            "hybrid_steps": MappingConfig().hybrid_steps,
            "mflop_per_patch_step": flops / 1e6,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cpu_count": os.cpu_count(),
            "load_1min": os.getloadavg()[0],
        }
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
