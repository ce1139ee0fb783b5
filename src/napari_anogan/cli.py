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


#: A stage's bar on the command line: its share done, then what and how long still.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:24}| {detail}"
#: A stage whose share done is not known yet: what it does.
BUSY_FORMAT = "{desc}: {detail}"
#: Least time between two redraws of a bar (seconds), unless its whole percent changed.
BAR_REFRESH_S = 0.2


def _stage_bar(description: str):
    """Return a tqdm bar of one stage, with a ``{detail}`` field (what, time left)."""
    from tqdm import tqdm

    class StageBar(tqdm):
        detail = ""

        @property
        def format_dict(self):
            return {**super().format_dict, "detail": self.detail}

    return StageBar(
        total=100, desc=description, bar_format=BUSY_FORMAT, file=sys.stderr, leave=True
    )


def _drain(job: Generator, description: str, *, quiet: bool = False):
    """Run a progress generator to completion with one bar per stage; return its result.

    The events go through :class:`~napari_anogan.progress.ProgressTracker`, as in the
    widgets: each stage (preprocess, map, write; train GAN, reference, ...) gets a bar of
    its own that only moves forward, with what it does and its estimated time left, and
    ends with the time it took.
    """
    import time

    from napari_anogan.progress import ProgressTracker, format_duration

    tracker = ProgressTracker()
    bar = None
    shown: tuple = ()
    last_draw = 0.0

    def close(bar, seconds: float, known: bool) -> None:
        if known:
            bar.bar_format = BAR_FORMAT
            bar.n = 100
        bar.detail = f"done in {format_duration(seconds)}"
        bar.refresh()
        bar.close()

    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                if bar is not None and tracker.last is not None:
                    close(bar, tracker.stage_seconds(), tracker.last.fraction is not None)
                    bar = None
                return stop.value
            if quiet:
                continue
            before = tracker.last
            progress = tracker.update(event)
            if progress.new_stage:
                if bar is not None and before is not None:
                    close(bar, progress.previous_s or 0.0, before.fraction is not None)
                bar = _stage_bar(f"{description} · {progress.stage}")
            assert bar is not None
            if progress.fraction is not None:
                bar.bar_format = BAR_FORMAT
                bar.n = progress.percent
            now = time.monotonic()
            state = (progress.stage_number, progress.percent)
            if state != shown or now - last_draw >= BAR_REFRESH_S:
                bar.detail = " · ".join(p for p in (progress.detail, progress.eta_text()) if p)
                bar.refresh()
                shown, last_draw = state, now
    finally:
        if bar is not None:
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
        _expand(args, args.inputs),
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
        init=args.init,
        time_limit=args.time_limit,
        data_kind=args.data_kind,
        description=args.description,
    )


def _expand(args: argparse.Namespace, paths: Sequence[str]) -> list[Path]:
    """Return the scans of the paths given (``--folders``); say how folders were read."""
    from napari_anogan.io.inputs import expand_inputs

    scans, notes = expand_inputs(paths, args.folders)
    if not args.quiet:
        for note in notes:
            print(note, file=sys.stderr)
    return scans


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


def _score_model(args: argparse.Namespace) -> str:
    """Return the ``-m`` model, or the bundled one (said on stderr) when none was given."""
    if args.model is not None:
        args.model_note = ""
        return args.model
    from napari_anogan.resources import BUNDLED_MODEL, sample_path

    path = sample_path(BUNDLED_MODEL)
    args.model_note = f"bundled model {path.name} (no -m given)"
    print(
        f"napari-anogan score: no model given (-m): using the bundled model {path.name}, "
        "trained on synthetic healthy eyes only; give -m MODEL for real scans",
        file=sys.stderr,
    )
    logger.debug("bundled model: %s", path)
    return str(path)


def _cmd_score(args: argparse.Namespace) -> int:
    args.model = _score_model(args)
    if args.workers is not None or args.scheduler is not None:
        return _cmd_score_dask(args)
    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.io import read_volume
    from napari_anogan.pipeline import score_volume

    model = load_checkpoint(args.model)
    settings = _score_settings(args)
    outdir = _outdir(args.output)
    for path in _expand(args, args.inputs):
        # lazy: a TIFF or .npy volume is read a chunk of B-scans at a time
        volume = read_volume(path, lazy=True)
        job = score_volume(
            volume,
            model,
            settings,
            outdir=outdir,
            chunk_slices=args.chunk_slices,
            figures=args.figures,
        )
        result = _drain(job, f"score {volume.name}", quiet=args.quiet)
        print(_summary_line(result, model_note=args.model_note))
        _print_fit(result, args.model, path)
    return 0


def _print_fit(result, model, scan) -> None:
    """Print the model-fit warning line when the model does not describe the scan."""
    from napari_anogan.scoring.fit import fit_message

    message = fit_message(result.model_fit, str(model), str(scan))
    if message:
        print(message)


def _cmd_score_dask(args: argparse.Namespace) -> int:
    from napari_anogan.pipeline.cluster import score_paths
    from napari_anogan.scoring.fit import fit_message

    def report(status, done, total):
        print(f"[{done}/{total}] {status.line()}", flush=True)
        message = fit_message(status.model_fit or {}, str(args.model), status.path)
        if message:
            print(message, flush=True)

    statuses = score_paths(
        _expand(args, args.inputs),
        args.model,
        _score_settings(args),
        args.output,
        workers=args.workers,
        scheduler=args.scheduler,
        on_result=report,
        figures=args.figures,
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


def _summary_line(result, model_note: str = "") -> str:
    """One line per scored volume: the model (when it was not chosen), its fit, the scores."""
    from napari_anogan.scoring.fit import fit_summary

    head = [model_note] if model_note else []
    fit = getattr(result, "model_fit", None)
    if fit:
        head.append(f"model fit: {fit_summary(fit)}")
    prefix = f"{'; '.join(head)}; " if head else ""
    return (
        f"{result.name}: {prefix}volume score {result.volume_score:.4g}, "
        f"{len(result.patches['slice'])} patches, {len(result.candidates)} candidate regions"
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_anogan.evaluation.experiment import run_evaluation

    settings = _score_settings(args)
    job = run_evaluation(
        args.model,
        normal=_expand(args, args.normal),
        anomalous=_expand(args, args.anomalous),
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


def _cmd_info(args: argparse.Namespace) -> int:
    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.model_card import card_lines, model_card

    model = load_checkpoint(args.model)
    print(f"{args.model} ({Path(args.model).stat().st_size / 1e6:.1f} MB)")
    for line in card_lines(model_card(model)):
        print(f"  {line}")
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
        "--epochs",
        type=int,
        default=None,
        help="GAN training epochs (paper: 20); default: chosen for the data, about "
        f"{defaults.TRAIN_UPDATES} updates ({defaults.ADAPT_UPDATES} with --init), "
        f"{defaults.TRAIN_MIN_EPOCHS}-{defaults.TRAIN_MAX_EPOCHS} epochs",
    )
    p.add_argument(
        "--init",
        metavar="MODEL",
        help="adapt this trained model to the scans (fine-tune its G, D and encoder; the "
        "feature bank and healthy reference come from the new scans): a few healthy scans "
        "of another device are enough",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop training in time to finish a usable model (encoder, feature bank and "
        "healthy reference included) within MINUTES",
    )
    p.add_argument(
        "--data-kind",
        choices=("real", "synthetic"),
        default="real",
        help="what the healthy scans are, for the model card (napari-anogan info)",
    )
    p.add_argument(
        "--description",
        default="",
        help="free text for the model card: device, protocol, cohort",
    )
    _add_folders_option(p)
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
    _add_folders_option(p)
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="model checkpoint (default: the bundled model, trained on synthetic healthy eyes)",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_score_options(p)
    p.add_argument(
        "--figures",
        action=argparse.BooleanOptionalAction,
        default=defaults.WRITE_FIGURES,
        help="also write <stem>_overview.png: the top B-scans with heatmap, candidates and "
        "score bars, the en-face map, the volume score (--no-figures: skip it)",
    )
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
    _add_folders_option(p)
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


def _add_info_command(sub: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``info`` subcommand."""
    p = sub("info", help="show a model's card: what it was trained on, and how")
    p.add_argument("model", help="model checkpoint (.pt)")
    p.set_defaults(func=_cmd_info)


def _add_folders_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--folders",
        choices=("auto", "volume", "collection"),
        default=defaults.FOLDERS,
        help="a folder of B-scan images is one volume (exported slices of one scan) or a "
        "collection of independent B-scans, each a scan of its own; auto: a volume when "
        "its images share one size and their names differ in one number only",
    )


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
    _add_info_command(sub)
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
