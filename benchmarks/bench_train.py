"""Seconds per training batch of the GAN and of the encoder, float32 against mixed precision.

Times :func:`~napari_anogan.training.train_gan` and :func:`~napari_anogan.training.train_encoder`
themselves (a D step and a G step per batch; one encoder step per batch) on random
patches, after warm-up batches, for each preset and each ``amp`` setting. Prints ONE JSON
object with the machine's CPU count and whether it has AMX (where ``amp=None`` turns
mixed precision on).

    .venv/bin/python benchmarks/bench_train.py [--presets small paper] [--batches 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from napari_anogan.device import amp_by_default
from napari_anogan.events import EventKind
from napari_anogan.models import Discriminator, Generator, get_preset
from napari_anogan.training import EncoderConfig, TrainConfig, train_encoder, train_gan


def _per_batch(events, warmup: int) -> float:
    """Mean seconds between BATCH events after the first ``warmup`` of them."""
    stamps = []
    for event in events:
        if event.kind == EventKind.BATCH:
            stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[warmup - 1]) / (len(stamps) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "paper"])
    parser.add_argument("--batches", type=int, default=6, help="timed batches per setting")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    warmup = 2
    n = (args.batches + warmup) * args.batch_size
    patches = np.random.default_rng(0).uniform(-1, 1, (n, 1, 64, 64)).astype(np.float32)
    results: dict[str, dict[str, float]] = {}
    for preset in args.presets:
        cfg = get_preset(preset)
        for amp in (False, True):
            tcfg = TrainConfig(
                epochs=1,
                batch_size=args.batch_size,
                device="cpu",
                sample_every=0,
                holdout_fraction=0.0,
                amp=amp,
            )
            gan_s = _per_batch(train_gan(patches, cfg, tcfg, build_reference=False), warmup)
            g, d = Generator(cfg), Discriminator(cfg)
            ecfg = EncoderConfig(epochs=1, batch_size=args.batch_size, device="cpu", amp=amp)
            enc_s = _per_batch(train_encoder(patches, g, d, ecfg), warmup)
            results[f"{preset}_{'bf16' if amp else 'fp32'}"] = {
                "gan_s_per_batch": round(gan_s, 4),
                "encoder_s_per_batch": round(enc_s, 4),
            }
    for preset in args.presets:
        fp32, bf16 = results[f"{preset}_fp32"], results[f"{preset}_bf16"]
        results[f"{preset}_speedup"] = {
            k: round(fp32[k] / bf16[k], 2) for k in ("gan_s_per_batch", "encoder_s_per_batch")
        }
    print(
        json.dumps(
            {
                "benchmark": "train",
                "batch_size": args.batch_size,
                "timed_batches": args.batches,
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "amx": amp_by_default(torch.device("cpu")),
                "machine": platform.processor() or platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
