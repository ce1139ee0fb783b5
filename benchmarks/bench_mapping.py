"""Throughput of the latent mapping: per-patch loop vs batched iterative vs hybrid vs encoder.

Same model and the same patches for every variant. Prints ONE JSON object:

``per_patch_loop_pps``
    How public AnoGAN re-implementations map: one patch at a time (batch size 1),
    ``torch.optim.Adam`` on z, float32, ``loss.backward()`` with G's and D's parameters
    left trainable as in their code (``per_patch_loop_frozen_pps``: the same loop with
    the parameters frozen, its best case). Patches per second at the paper's 500 steps
    (extrapolated from ``--loop-steps`` timed steps per patch).
``batched_iterative_pps``
    :func:`~napari_anogan.mapping.map_to_latent`, iterative mode with the library's
    defaults (mixed precision where it pays, see ``amp_default``), one pool of
    ``--batch-size`` patches, early stopping off (pure throughput); patches per second at
    500 steps: the search is timed at ``--steps`` and twice as many steps, the difference
    gives the cost of a step and the rest the fixed cost per patch (entry, final scoring
    pass), and ``1 / (fixed + 500 * step)`` is reported.
    ``batched_iterative_fp32_pps``: the same in float32.
``hybrid_pps``, ``encoder_pps``
    The ``hybrid`` (default settings: K steps after E(x), early stopping) and ``encoder``
    modes, end to end on ``--n-patches`` patches.
``mapping_gflops``
    Matmul/conv FLOPs of one search step (forward G and D, backward to z; counted with
    ``torch.utils.flop_counter``) times the float32 batched search's patch-steps per
    second (``mapping_amp_gflops``: the same for the mixed-precision search).
``matmul_gflops``
    Best of several 2048 x 2048 float32 matrix products: the machine's practical peak
    (``matmul_bf16_gflops``: bf16, the peak the mixed-precision search compares with).

The machine may be shared: the 1-minute load average is recorded before and after, and
every timing is the best of ``--repeat`` runs.

    .venv/bin/python benchmarks/bench_mapping.py                # the bundled small model
    .venv/bin/python benchmarks/bench_mapping.py --model none --preset paper
                                                   # random G/D of the paper's size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_anogan.device import amp_by_default
from napari_anogan.events import drain
from napari_anogan.mapping import MappingConfig, map_to_latent
from napari_anogan.models import Discriminator, Generator, get_preset
from napari_anogan.models.encoder import Encoder
from napari_anogan.models.folding import fold_batch_norm

PAPER_STEPS = 500


def load_model(path: str | None, preset: str):
    """G, D, E and preprocessing config of a checkpoint, or random ones of a preset."""
    if path and Path(path).is_file():
        from napari_anogan.checkpoint import load_checkpoint

        m = load_checkpoint(path)
        encoder = m.encoder
        if encoder is None:  # speed does not depend on the weights
            encoder = Encoder(m.model_config).eval()
        return m.generator, m.discriminator, encoder, m.preprocess_config, str(path)
    cfg = get_preset(preset)
    torch.manual_seed(0)
    return Generator(cfg).eval(), Discriminator(cfg).eval(), Encoder(cfg).eval(), {}, None


def test_patches(preprocess: dict, n: int, seed: int) -> np.ndarray:
    """Grid patches of a synthetic diseased volume, preprocessed like the model's data."""
    from napari_anogan.datasets.synthetic import make_volume
    from napari_anogan.io.volume import Volume
    from napari_anogan.preprocess import PreprocessConfig, grid_patches, preprocess_volume

    cfg = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
    syn = make_volume(8, 496, 512, lesions=["irf", "drusen"], seed=seed)
    pre = preprocess_volume(Volume(syn.data, spacing=syn.spacing, name="bench"), cfg)
    images = grid_patches(pre, stride=32).images
    reps = -(-n // len(images))
    return np.concatenate([images] * reps)[:n].astype(np.float32)


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def per_patch_loop(
    g, d, x: np.ndarray, steps: int, frozen: bool, lam: float = 0.1, lr: float = 0.05
) -> None:
    """One patch at a time with torch.optim.Adam (the public re-implementations' way)."""
    g.eval().requires_grad_(not frozen)
    d.eval().requires_grad_(not frozen)
    gen = torch.Generator().manual_seed(0)
    for i in range(len(x)):
        xi = torch.from_numpy(x[i : i + 1])
        with torch.no_grad():
            fx = d.features(xi)
        z = (torch.rand(1, g.config.z_dim, generator=gen) * 2 - 1).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            gz = g(z)
            loss = (1 - lam) * (xi - gz).abs().sum() + lam * (fx - d.features(gz)).abs().sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.clamp_(-1, 1)
    for m in (g, d):
        m.requires_grad_(False)
        m.zero_grad(set_to_none=True)


def step_flops(g, d, batch: int) -> int:
    """Matmul/conv FLOPs of one search step (as map_to_latent runs it) for ``batch`` patches."""
    from torch.utils.flop_counter import FlopCounterMode

    gf, df = fold_batch_norm(g), fold_batch_norm(d)
    x = torch.rand(batch, 1, g.config.patch_size, g.config.patch_size) * 2 - 1
    with torch.no_grad():
        fx = df.features(x)
    z = (torch.rand(batch, g.config.z_dim) * 2 - 1).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        gz = gf(z)
        loss = 0.9 * (x - gz).abs().sum() + 0.1 * (fx - df.features(gz)).abs().sum()
        loss.backward()
    return int(counter.get_total_flops())


def matmul_gflops(size: int = 2048, repeat: int = 10, dtype=torch.float32) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    t = best_time(lambda: a @ b, repeat)
    return 2 * size**3 / t / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default="sample_data/anogan_small.pt",
        help="checkpoint ('none': random G/D of --preset; speed does not depend on weights)",
    )
    parser.add_argument("--preset", default="small", help="random model if --model is absent")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps, batched search")
    parser.add_argument("--loop-patches", type=int, default=4)
    parser.add_argument("--loop-steps", type=int, default=20)
    parser.add_argument("--n-patches", type=int, default=512, help="hybrid/encoder patches")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    g, d, e, pre, model_path = load_model(args.model, args.preset)
    x = test_patches(pre, max(args.batch_size, args.n_patches), seed=7)
    xb = x[: args.batch_size]

    def loop(frozen: bool) -> float:
        t = best_time(
            lambda: per_patch_loop(g, d, x[: args.loop_patches], args.loop_steps, frozen),
            args.repeat,
        )
        return t / (args.loop_patches * args.loop_steps)

    loop_step_s = loop(frozen=False)
    loop_frozen_step_s = loop(frozen=True)

    def batched(amp: bool | None = None, compile_: bool = False, steps: int = args.steps) -> None:
        cfg = MappingConfig(
            steps=steps,
            early_stop=False,
            batch_size=args.batch_size,
            device="cpu",
            keep_images=False,
            amp=amp,
            compile=compile_,
        )
        drain(map_to_latent(g, d, xb, cfg))

    def per_patch_step(amp: bool | None) -> tuple[float, float]:
        """Seconds per patch-step and fixed seconds per patch (entry, final scoring pass).

        Timed at ``steps`` and ``2 * steps``: the difference is the search alone.
        """
        t1 = best_time(lambda: batched(amp=amp), args.repeat)
        t2 = best_time(lambda: batched(amp=amp, steps=2 * args.steps), args.repeat)
        step = (t2 - t1) / (len(xb) * args.steps)
        return step, max(0.0, t1 / len(xb) - args.steps * step)

    def pps_500(step: float, fixed: float) -> float:
        return 1.0 / (fixed + PAPER_STEPS * step)

    default_step_s, default_fixed_s = per_patch_step(None)
    fp32_step_s, fp32_fixed_s = per_patch_step(False)
    amp_default = amp_by_default(torch.device("cpu"))
    flops = step_flops(g, d, args.batch_size) / args.batch_size

    def mode_run(mode: str) -> None:
        cfg = MappingConfig(mode=mode, batch_size=args.batch_size, device="cpu", keep_images=False)
        drain(map_to_latent(g, d, x[: args.n_patches], cfg, encoder=e))

    hybrid_t = best_time(lambda: mode_run("hybrid"), args.repeat)
    encoder_t = best_time(lambda: mode_run("encoder"), args.repeat)
    result = {
        "per_patch_loop_pps": 1.0 / (loop_step_s * PAPER_STEPS),
        "per_patch_loop_frozen_pps": 1.0 / (loop_frozen_step_s * PAPER_STEPS),
        "batched_iterative_pps": pps_500(default_step_s, default_fixed_s),
        "batched_iterative_fp32_pps": pps_500(fp32_step_s, fp32_fixed_s),
        "hybrid_pps": args.n_patches / hybrid_t,
        "encoder_pps": args.n_patches / encoder_t,
        "mapping_gflops": flops / fp32_step_s / 1e9,
        "matmul_gflops": matmul_gflops(),
        "amp_default": amp_default,
    }
    if amp_default:
        result["mapping_amp_gflops"] = flops / default_step_s / 1e9
        result["matmul_bf16_gflops"] = matmul_gflops(dtype=torch.bfloat16)
    result["batched_vs_loop"] = result["batched_iterative_pps"] / result["per_patch_loop_pps"]
    result["batched_fp32_vs_frozen_loop"] = (
        result["batched_iterative_fp32_pps"] / result["per_patch_loop_frozen_pps"]
    )
    result["mapping_vs_matmul"] = result["mapping_gflops"] / result["matmul_gflops"]
    result["hybrid_vs_iterative500"] = result["hybrid_pps"] / result["batched_iterative_pps"]
    if args.compile:
        start = time.perf_counter()
        batched(compile_=True)  # includes compilation
        result["compile_first_run_s"] = time.perf_counter() - start
        compiled_t = best_time(lambda: batched(compile_=True), args.repeat)
        result["compiled_iterative_pps"] = len(xb) / compiled_t * args.steps / PAPER_STEPS
    hybrid_default = MappingConfig(mode="hybrid")
    result.update(
        {
            "model": model_path or f"random {args.preset}",
            "preset": g.config.preset,
            "patch_size": g.config.patch_size,
            "batch_size": args.batch_size,
            "timed_steps": args.steps,
            "loop_patches": args.loop_patches,
            "loop_steps": args.loop_steps,
            "n_patches_modes": args.n_patches,
            "hybrid_steps": hybrid_default.hybrid_steps,
            "mflop_per_patch_step": flops / 1e6,
            "ms_per_patch_step": default_step_s * 1e3,
            "ms_per_patch_step_fp32": fp32_step_s * 1e3,
            "ms_fixed_per_patch": default_fixed_s * 1e3,
            "ms_per_patch_step_loop": loop_step_s * 1e3,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "load_1min_before": load_before,
            "load_1min_after": os.getloadavg()[0],
            "repeat": args.repeat,
        }
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
