"""The ``napari-anogan`` command line.

Each subcommand is a thin layer over :mod:`napari_anogan.pipeline`: it parses arguments,
drains the job's progress events into a progress bar, and turns a project error
(:class:`~napari_anogan.errors.AnoganError`) into one line on stderr and exit status 2.
Heavy imports (torch, napari) happen inside the subcommands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

from napari_anogan import settings as defaults
from napari_anogan.errors import AnoganError

logger = logging.getLogger("napari_anogan")


def _drain(job: Generator, description: str, *, quiet: bool = False):
    """Run a progress generator to completion with a tqdm bar; return its result."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="step", disable=quiet, file=sys.stderr, leave=True)
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            total = getattr(event, "total", None)
            step = getattr(event, "step", None)
            if total and bar.total != total:
                bar.reset(total=total)
            if step is not None and total:
                bar.n = min(step, total)
            losses = getattr(event, "losses", None) or {}
            if losses:
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:4]}, refresh=False)
            message = getattr(event, "message", "")
            if message:
                bar.set_description(f"{description}: {message}", refresh=False)
            bar.refresh()
    finally:
        bar.close()


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from napari_anogan.io import read_volume
    from napari_anogan.preprocess import (
        PreprocessConfig,
        preprocess_volume,
        write_preprocess_outputs,
    )

    config = PreprocessConfig(
        target_width=args.target_width,
        margin_above=args.margin_above,
        margin_below=args.margin_below,
    )
    outdir = _outdir(args.output)
    for path in args.inputs:
        volume = read_volume(path)
        pre = preprocess_volume(volume, config)
        written = write_preprocess_outputs(volume, pre, outdir)
        for kind, file in written.items():
            logger.info("%s: wrote %s %s", volume.name, kind, file)
        print(f"{volume.name}: {volume.shape} -> band {pre.flat.shape}; outputs in {outdir}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import contextlib

    from napari_anogan.training import ddp

    use_ddp = args.ddp or ddp.launched_by_torchrun()
    asked = getattr(args, "encoder", None)  # None: not given on the command line
    if use_ddp and asked:
        raise AnoganError(
            "--encoder is not supported with DDP: train the GAN with torchrun, then add the "
            "encoder in one process with `napari-anogan train SAME INPUTS -o MODEL --resume "
            "--encoder` (same options)"
        )
    if args.ddp and not ddp.launched_by_torchrun() and os.environ.get("WORLD_SIZE") == "1":
        logger.info("--ddp with a single process: training without DDP")
        use_ddp = False
    args.encoder = asked if asked is not None else defaults.TRAIN_ENCODER and not use_ddp
    if use_ddp and asked is None and defaults.TRAIN_ENCODER:
        logger.info(
            "DDP trains the GAN only; add the encoder in one process afterwards with "
            "`napari-anogan train SAME INPUTS -o MODEL --resume --encoder`"
        )
    group = ddp.distributed_training(args.device) if use_ddp else contextlib.nullcontext()
    with group as ctx:
        main = ctx is None or ctx.is_main
        if not main:  # progress and logs on rank 0 only; errors still show
            logging.getLogger("napari_anogan").setLevel(logging.ERROR)
        job = _train_job(args, device=str(ctx.device) if ctx is not None else args.device)
        result = _drain(job, "train", quiet=args.quiet or not main)
    if main:
        ranks = f", {ctx.world_size} DDP processes" if ctx is not None else ""
        print(f"model written to {args.output} ({result.epochs} epochs{ranks})")
    return 0


def _train_job(args: argparse.Namespace, *, device: str) -> Generator:
    from napari_anogan.pipeline import train_from_paths

    return train_from_paths(
        args.inputs,
        args.output,
        preset=args.preset,
        epochs=args.epochs,
        patches_per_scan=args.patches_per_scan,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        resume=args.resume,
        encoder=args.encoder,
        encoder_epochs=args.encoder_epochs,
    )


def _score_settings(args: argparse.Namespace):
    from napari_anogan.pipeline import ScoreSettings

    return ScoreSettings(
        mode=args.mapping,
        steps=args.steps,
        hybrid_steps=args.hybrid_steps,
        lam=args.lam,
        stride=args.stride,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        score=args.score,
        bscan_top_k=args.bscan_top_k,
    )


def _cmd_score(args: argparse.Namespace) -> int:
    if args.workers is not None or args.scheduler is not None:
        return _cmd_score_dask(args)
    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.io import read_volume
    from napari_anogan.pipeline import score_volume

    model = load_checkpoint(args.model)
    settings = _score_settings(args)
    outdir = _outdir(args.output)
    for path in args.inputs:
        # lazy: a TIFF or .npy volume is read a chunk of B-scans at a time
        volume = read_volume(path, lazy=True)
        job = score_volume(volume, model, settings, outdir=outdir, chunk_slices=args.chunk_slices)
        result = _drain(job, f"score {volume.name}", quiet=args.quiet)
        print(_summary_line(result))
    return 0


def _cmd_score_dask(args: argparse.Namespace) -> int:
    from napari_anogan.pipeline.cluster import score_paths

    def report(status, done, total):
        print(f"[{done}/{total}] {status.line()}", flush=True)

    statuses = score_paths(
        args.inputs,
        args.model,
        _score_settings(args),
        args.output,
        workers=args.workers,
        scheduler=args.scheduler,
        on_result=report,
        show_dask_logs=args.verbose,
    )
    failed = [s for s in statuses if s.status == "failed"]
    for status in failed:
        print(f"napari-anogan score: {status.line()}", file=sys.stderr)
    if failed:
        print(
            f"napari-anogan score: {len(failed)} of {len(statuses)} volumes have no complete "
            f"outputs in {args.output}: {', '.join(s.name for s in failed)}",
            file=sys.stderr,
        )
        return 2
    return 0


def _summary_line(result) -> str:
    return (
        f"{result.name}: volume score {result.volume_score:.4g}, "
        f"{len(result.patches['slice'])} patches, {len(result.candidates)} candidate regions"
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_anogan.evaluation.experiment import run_evaluation

    settings = _score_settings(args)
    job = run_evaluation(
        args.model,
        normal=args.normal,
        anomalous=args.anomalous,
        masks=args.masks,
        outdir=_outdir(args.output),
        settings=settings,
        acae_epochs=args.acae_epochs,
        acae_train=args.acae_train,
    )
    metrics = _drain(job, "evaluate", quiet=args.quiet)
    from napari_anogan.evaluation.table import table1

    for name, mask in (metrics.get("masks") or {}).items():
        print(f"{name}: labelled by {'mask ' + mask if mask else 'its group (no mask found)'}")
    print(table1(metrics))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_anogan.pipeline import run_demo

    result = _drain(run_demo(_outdir(args.output), real=args.real), "demo", quiet=args.quiet)
    print(result)
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from napari_anogan._widgets.viewer import open_viewer

    open_viewer(args.path)
    return 0


def _outdir(path: str | Path) -> Path:
    from napari_anogan.errors import OutputError

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder ({exc.strerror})", out) from exc
    return out


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_score_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mapping",
        choices=("iterative", "encoder", "hybrid"),
        default=defaults.MAPPING_MODE,
        help="latent mapping: hybrid = encoder start + a few steps (falls back to "
        "iterative for a model without an encoder), encoder = encoder only, iterative = "
        "the paper's random-start search",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=defaults.MAPPING_STEPS,
        help="iterative mapping steps (paper: 500)",
    )
    p.add_argument(
        "--hybrid-steps",
        type=int,
        default=defaults.HYBRID_STEPS,
        help="steps K after the encoder start in the hybrid mode",
    )
    p.add_argument(
        "--lam",
        type=float,
        default=defaults.SCORING_LAM,
        help="lambda of eq. (5)/(6), chosen on a validation set (paper: 0.1)",
    )
    p.add_argument(
        "--stride", type=int, default=defaults.SCORE_STRIDE, help="patch grid stride in pixels"
    )
    p.add_argument(
        "--batch-size", type=int, default=defaults.SCORE_BATCH_SIZE, help="patches mapped at once"
    )
    p.add_argument("--device", default=defaults.DEVICE, help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--seed", type=int, default=defaults.SEED, help="seed of the random latent start"
    )
    p.add_argument(
        "--score",
        choices=("feature", "anomaly"),
        default=defaults.SCORE,
        help="patch score that ranks B-scans and candidates: feature = distance of D's "
        "features to healthy training patches (models with a feature bank), anomaly = the "
        "paper's A",
    )
    p.add_argument(
        "--bscan-top-k",
        type=int,
        default=defaults.BSCAN_TOP_K,
        help="a B-scan's score is the mean of its K highest patch scores",
    )


_HELP = argparse.ArgumentDefaultsHelpFormatter
"""Every ``--help`` shows each option's default (the values of :mod:`napari_anogan.settings`)."""


def _add_preprocess_command(sub: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``preprocess`` subcommand."""
    p = sub("preprocess", help="normalise, find retina boundaries, flatten")
    p.add_argument("inputs", nargs="+", help="volumes, B-scans or folders of B-scans")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument(
        "--target-width",
        type=int,
        default=defaults.TARGET_WIDTH,
        help="columns when spacing unknown",
    )
    p.add_argument(
        "--margin-above", type=int, default=defaults.MARGIN_ABOVE, help="rows kept above the ILM"
    )
    p.add_argument(
        "--margin-below", type=int, default=defaults.MARGIN_BELOW, help="rows kept below BM"
    )
    p.set_defaults(func=_cmd_preprocess)


def _add_train_command(sub: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``train`` subcommand."""
    p = sub("train", help="train a healthy model")
    p.add_argument("inputs", nargs="+", help="healthy volumes, B-scans or folders")
    p.add_argument("-o", "--output", required=True, help="model checkpoint to write (.pt)")
    p.add_argument(
        "--preset",
        default=defaults.TRAIN_PRESET,
        choices=("paper", "small", "tiny"),
        help="model widths: the paper's DCGAN, a CPU-sized one, a test-sized one",
    )
    p.add_argument(
        "--epochs", type=int, default=defaults.TRAIN_EPOCHS, help="training epochs (paper: 20)"
    )
    p.add_argument(
        "--patches-per-scan",
        type=int,
        default=defaults.PATCHES_PER_SCAN,
        help="random patches per B-scan",
    )
    p.add_argument(
        "--batch-size", type=int, default=defaults.TRAIN_BATCH_SIZE, help="patches per step"
    )
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of weights and patches")
    p.add_argument("--device", default=defaults.DEVICE, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument(
        "--encoder",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="also train the f-AnoGAN encoder (fast hybrid/encoder scoring); with --resume "
        "on a finished model (same inputs and options), adds one to it (default: "
        f"{'on' if defaults.TRAIN_ENCODER else 'off'}, off under DDP)",
    )
    p.add_argument(
        "--encoder-epochs", type=int, default=defaults.ENCODER_EPOCHS, help="encoder epochs"
    )
    p.add_argument(
        "--ddp",
        action="store_true",
        help="train with DistributedDataParallel over the processes started by torchrun "
        "(automatic when torchrun starts several); each takes batch-size/processes patches "
        "per step (gloo on CPU, nccl on CUDA: cuda:LOCAL_RANK); rank 0 writes the model",
    )
    p.set_defaults(func=_cmd_train)


def _add_score_command(sub: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``score`` subcommand."""
    p = sub("score", help="score volumes with a healthy model")
    p.add_argument("inputs", nargs="+", help="volumes, B-scans or folders of B-scans")
    p.add_argument("-m", "--model", required=True, help="model checkpoint")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_score_options(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="score volumes as Dask tasks on a local cluster of N processes (re-runs skip "
        "volumes already scored with the same model and settings)",
    )
    p.add_argument("--scheduler", default=None, help="score on a running Dask cluster at ADDRESS")
    p.add_argument(
        "--chunk-slices",
        type=_non_negative_int,
        default=defaults.SCORE_CHUNK_SLICES,
        help="B-scans preprocessed, mapped and written at a time (bounds memory whatever the "
        "number of B-scans); 0 = the whole volume at once (smaller chunks differ from it only "
        "by float32 rounding)",
    )
    p.set_defaults(func=_cmd_score)


def _add_evaluate_command(sub: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` subcommand."""
    p = sub("evaluate", help="ROC/AUC of a model on labelled test data")
    p.add_argument("-m", "--model", required=True, help="model checkpoint")
    p.add_argument("--normal", nargs="+", required=True, help="healthy test inputs")
    p.add_argument("--anomalous", nargs="+", required=True, help="diseased test inputs")
    p.add_argument("--masks", help="folder of lesion masks (same stem as the input)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument(
        "--acae-epochs", type=int, default=defaults.ACAE_EPOCHS, help="epochs of the aCAE baseline"
    )
    p.add_argument(
        "--acae-train",
        nargs="+",
        help="healthy inputs for the aCAE baseline (default: the model's training inputs)",
    )
    _add_score_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _add_demo_command(sub: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    p = sub("demo", help="score the bundled sample with the bundled model")
    p.add_argument("-o", "--output", default="anogan-demo", help="output folder")
    p.add_argument(
        "--real",
        action="store_true",
        help="score the bundled real OCTDL B-scan with the bundled real model instead",
    )
    p.set_defaults(func=_cmd_demo)


def _add_view_command(sub: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``view`` subcommand."""
    p = sub("view", help="open napari with the plugin's widgets")
    p.add_argument("path", nargs="?", help="file or folder to open")
    p.set_defaults(func=_cmd_view)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``napari-anogan``."""
    parser = argparse.ArgumentParser(
        prog="napari-anogan",
        description="Unsupervised anomaly detection in retinal OCT with AnoGAN.",
        formatter_class=_HELP,
    )
    verbose_help = "debug logging (with --workers, also Dask's own logs)"
    quiet_help = "no progress bar"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    commands = parser.add_subparsers(dest="command", required=True)

    # -v/-q also after the subcommand; SUPPRESS keeps the value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help
    )

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=help, formatter_class=_HELP, parents=[common]
        )

    _add_preprocess_command(sub)
    _add_train_command(sub)
    _add_score_command(sub)
    _add_evaluate_command(sub)
    _add_demo_command(sub)
    _add_view_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-anogan``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except AnoganError as exc:
        print(f"napari-anogan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        detail = f" ({exc})" if str(exc) else ""
        print(
            f"napari-anogan {args.command}: error: out of memory{detail}; try a smaller "
            "input, or --chunk-slices/--batch-size where the command has them",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"napari-anogan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
