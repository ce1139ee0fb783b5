"""Fuzz the inputs: mutated real files and random arrays through readers, preprocess, score.

Every case is drawn from ``(seed, case number)`` alone, so any case can be run again on
its own. A case takes a real file (the bundled OME-TIFF volume and JPEG B-scans, TIFF,
PNG and ``.npy`` B-scans made from them, the bundled model checkpoints) and mutates it,
knowing its format (TIFF tags and OME-XML, PNG chunks with valid CRCs, JPEG frame
headers, ``.npy`` headers, checkpoint entries and tensors) or not (flipped, cut, inserted
and duplicated bytes); or it draws a random array (any dtype, shape, special values,
spacing). The result goes through what a user's file goes through: ``read_volume``
(eager and lazy), the napari reader, ``preprocess_volume``, ``load_checkpoint``, and for
a subset ``score_volume`` with the bundled model and its summary as JSON.

A case passes when it ends in a clean :class:`~napari_anogan.errors.AnoganError` or in a
correct result (3-D finite volume, positive spacing, a band in [-1, 1] with boundaries
inside the image, finite scores, a summary that is standard JSON). Anything else (another
exception, a wrong result, a hang) is a crash, reported with the command that repeats
it. The process runs under an address-space limit, so a file that declares a huge image
fails as a ``MemoryError`` crash instead of exhausting the machine.

Prints ONE JSON object (cases, outcomes by target, crashes with their reproducer) and
exits 1 if anything crashed::

    python scripts/fuzz_inputs.py --examples 10000 --seed 0 > fuzz.json
    python scripts/fuzz_inputs.py --seed 0 --case 4711      # one case, with its traceback
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_data"

#: Address-space limit of the fuzzing process (bytes): a huge allocation fails at once.
MEMORY_LIMIT = 6 * 2**30


class CaseTimeout(Exception):
    """A case ran past its time limit (a hang)."""


class BadResult(AssertionError):
    """A call returned, but its result is wrong (NaN, wrong shape...)."""


@dataclass
class Case:
    """One fuzz case: what was done, and how it ended."""

    number: int
    target: str = ""
    mutation: str = ""
    outcome: str = ""  # ok | clean | crash
    error: str = ""
    where: str = ""
    stages: list[str] = field(default_factory=list)
    trace: str = ""


# ------------------------------------------------------------------------------ seeds


class Seeds:
    """Real files to mutate, made once in a temporary folder."""

    def __init__(self, folder: Path) -> None:
        import tifffile
        from PIL import Image

        from napari_anogan.io import read_volume

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        sample = read_volume(SAMPLES / "sample_volume.ome.tif")
        vol = np.asarray(sample.data)
        small = np.ascontiguousarray(vol[:2, ::2, ::2])  # 2 x 248 x 256, retina kept
        spacing = sample.spacing
        half = (spacing[0], spacing[1] * 2, spacing[2] * 2)
        self.small = small
        files: dict[str, Path] = {}

        def put(name: str, write: Callable[[Path], Any]) -> None:
            path = folder / name
            write(path)
            files[name] = path

        from napari_anogan.io import write_tiff

        put("volume.ome.tif", lambda p: shutil.copy(SAMPLES / "sample_volume.ome.tif", p))
        put("small.ome.tif", lambda p: write_tiff(p, small, spacing=half))
        put("plain.tif", lambda p: tifffile.imwrite(p, small))
        put("bscan.tif", lambda p: tifffile.imwrite(p, small[0]))
        put("u16.tif", lambda p: tifffile.imwrite(p, small.astype(np.uint16) * 200))
        put("float.tif", lambda p: tifffile.imwrite(p, small.astype(np.float32) / 7))
        put(
            "imagej.tif",
            lambda p: tifffile.imwrite(
                p,
                small,
                imagej=True,
                resolution=(1 / half[2], 1 / half[1]),
                metadata={"spacing": half[0], "unit": "um"},
            ),
        )
        put("rgb.tif", lambda p: tifffile.imwrite(p, np.stack([small[0]] * 3, -1)))
        put("lzw.tif", lambda p: tifffile.imwrite(p, small, compression="lzw"))
        put("bscan.png", lambda p: Image.fromarray(small[0]).save(p))
        put("bscan16.png", lambda p: Image.fromarray(small[0].astype(np.uint16) * 250).save(p))
        put("rgb.png", lambda p: Image.fromarray(np.stack([small[0]] * 3, -1)).save(p))
        put("bscan.bmp", lambda p: Image.fromarray(small[0]).save(p))
        for jpeg in sorted(SAMPLES.glob("*.jp*g")):
            put(jpeg.name, lambda p, src=jpeg: shutil.copy(src, p))
        put("small.jpg", lambda p: Image.fromarray(small[0]).save(p, quality=90))
        put("volume.npy", lambda p: np.save(p, small))
        put("bscan.npy", lambda p: np.save(p, small[0].astype(np.float32)))
        put("big-endian.npy", lambda p: np.save(p, small.astype(">u2")))
        self.files = files
        self.blobs = {name: path.read_bytes() for name, path in files.items()}
        self.checkpoints = {
            name: (SAMPLES / name).read_bytes()
            for name in ("anogan_small.pt", "anogan_octdl.pt")
            if (SAMPLES / name).is_file()
        }
        self.ome_xml = tifffile.TiffFile(files["small.ome.tif"]).ome_metadata or ""


# -------------------------------------------------------------------------- mutations

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 16, 32, 63, 64, 65, 127, 128, 255, 256, 1000, 4096,
               32767, 32768, 65535, 65536, 100000, 2**24, 2**31 - 1, 2**31, 2**32 - 1]  # fmt: skip


def _interesting(rng: np.random.Generator, old: int | None = None) -> int:
    pick = rng.integers(0, 4)
    if old is not None and pick == 0:
        return max(0, int(old) + int(rng.choice([-1, 1, -2, 2, 100])))
    if old is not None and pick == 1:
        return int(old) * int(rng.choice([2, 10, 1000]))
    return int(rng.choice(INTERESTING))


def mutate_bytes(blob: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Format-blind mutations of a file's bytes."""
    data = bytearray(blob)
    n = len(data)
    kind = rng.choice(["flip", "truncate", "insert", "delete", "duplicate", "zero", "garbage"])
    if n == 0 or kind == "garbage":
        return bytes(rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8)), "garbage"
    if kind == "flip":
        k = int(rng.integers(1, 16))
        for pos in rng.integers(0, n, k):
            data[int(pos)] ^= int(rng.integers(1, 256))
        return bytes(data), f"flip {k} bytes"
    if kind == "truncate":
        cut = int(rng.integers(0, n))
        return bytes(data[:cut]), f"truncate to {cut} of {n} bytes"
    a = int(rng.integers(0, n))
    b = min(n, a + int(rng.integers(1, 512)))
    if kind == "insert":
        extra = bytes(rng.integers(0, 256, b - a, dtype=np.uint8))
        return bytes(data[:a] + extra + data[a:]), f"insert {b - a} bytes at {a}"
    if kind == "delete":
        return bytes(data[:a] + data[b:]), f"delete bytes {a}-{b}"
    if kind == "duplicate":
        return bytes(data[:b] + data[a:b] + data[b:]), f"duplicate bytes {a}-{b}"
    data[a:b] = bytes(b - a)
    return bytes(data), f"zero bytes {a}-{b}"


def mutate_tiff(blob: bytes, rng: np.random.Generator, seeds: Seeds) -> tuple[bytes, str]:
    """Change a TIFF tag's value, type or count, or rewrite the OME-XML."""
    import tifffile

    if rng.random() < 0.25 and seeds.ome_xml:
        return _mutate_ome(rng, seeds)
    data = bytearray(blob)
    try:
        with tifffile.TiffFile(io.BytesIO(blob)) as tif:
            page = tif.pages[int(rng.integers(0, len(tif.pages)))]
            tags = list(page.tags.values())
            byteorder = tif.byteorder
            bigtiff = tif.is_bigtiff
    except Exception:
        return mutate_bytes(blob, rng)
    tag = tags[int(rng.integers(0, len(tags)))]
    what = rng.choice(["value", "value", "type", "count"])
    if bigtiff:  # entry: code 2, type 2, count 8, value 8
        count_fmt, count_at = "Q", 4
    else:  # entry: code 2, type 2, count 4, value 4
        count_fmt, count_at = "I", 4
    if what == "type":
        new = int(rng.choice([0, 1, 2, 3, 4, 5, 11, 12, 16, 99]))
        struct.pack_into(byteorder + "H", data, tag.offset + 2, new)
        return bytes(data), f"tag {tag.name}: type {int(tag.dtype)} -> {new}"
    if what == "count":
        new = _interesting(rng, tag.count)
        struct.pack_into(byteorder + count_fmt, data, tag.offset + count_at, min(new, 2**32 - 1))
        return bytes(data), f"tag {tag.name}: count {tag.count} -> {new}"
    code = str(tag.dataformat)[-1:]
    size = struct.calcsize(byteorder + code) if code in "BHILQbhilq" else 0
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(size)
    if fmt is None or tag.valueoffset + size > len(data):
        return mutate_bytes(blob, rng)
    old = tag.value if isinstance(tag.value, int) else None
    new = _interesting(rng, old) % (2 ** (8 * size))
    struct.pack_into(byteorder + fmt, data, tag.valueoffset, new)
    return bytes(data), f"tag {tag.name}: value {old} -> {new}"


def _mutate_ome(rng: np.random.Generator, seeds: Seeds) -> tuple[bytes, str]:
    """Write the small volume with its OME-XML changed (sizes, type, order, spacing)."""
    import tifffile

    xml = seeds.ome_xml
    attrs = re.findall(r'(\w+)="([^"]*)"', xml)
    name, old = attrs[int(rng.integers(0, len(attrs)))]
    choices = ["0", "-1", "1", "2", "3", "100000", "nan", "inf", "1e308", "-5.5", "", "x",
               "uint8", "float64", "bit", "XYZCT", "XYCZT", "pm", "parsec", "µm"]  # fmt: skip
    new = str(rng.choice(choices))
    text = xml.replace(f'{name}="{old}"', f'{name}="{new}"', 1)
    if rng.random() < 0.2:
        text = text[: int(rng.integers(0, len(text)))]  # broken XML
    buf = io.BytesIO()
    tifffile.imwrite(buf, seeds.small, description=text.encode("utf-8"), metadata=None)
    return buf.getvalue(), f"OME-XML {name}: {old!r} -> {new!r}"


def _png_chunks(blob: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos + 8 <= len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind = blob[pos + 4 : pos + 8]
        chunks.append((kind, blob[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    for kind, body in chunks:
        out += struct.pack(">I", len(body)) + kind + body
        out += struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return bytes(out)


def mutate_png(blob: bytes, rng: np.random.Generator, seeds: Seeds) -> tuple[bytes, str]:
    """Change IHDR fields or the chunks, with valid CRCs (so the decoder gets that far)."""
    chunks = _png_chunks(blob)
    if not chunks or chunks[0][0] != b"IHDR":
        return mutate_bytes(blob, rng)
    what = rng.choice(["ihdr", "ihdr", "drop", "duplicate", "idat", "text"])
    if what == "ihdr":
        fields = list(struct.unpack(">IIBBBBB", chunks[0][1]))
        names = ["width", "height", "bit depth", "colour type", "compression", "filter",
                 "interlace"]  # fmt: skip
        i = int(rng.integers(0, 7))
        limit = 2**31 - 1 if i < 2 else 255
        fields[i] = min(limit, _interesting(rng, fields[i]))
        chunks[0] = (b"IHDR", struct.pack(">IIBBBBB", *fields))
        return _png(chunks), f"IHDR {names[i]} -> {fields[i]}"
    i = int(rng.integers(0, len(chunks)))
    if what == "drop":
        kind = chunks.pop(i)[0]
        return _png(chunks), f"drop chunk {kind!r}"
    if what == "duplicate":
        chunks.insert(i, chunks[i])
        return _png(chunks), f"duplicate chunk {chunks[i][0]!r}"
    if what == "idat":
        idat = [k for k, (kind, _) in enumerate(chunks) if kind == b"IDAT"]
        if idat:
            k = idat[0]
            body = chunks[k][1]
            chunks[k] = (b"IDAT", body[: int(rng.integers(0, len(body) + 1))])
            return _png(chunks), "cut the image data (valid CRC)"
    text = bytes(rng.integers(32, 127, int(rng.integers(0, 300)), dtype=np.uint8))
    chunks.insert(1, (rng.choice([b"tEXt", b"zzZz", b"iCCP", b"pHYs"]), text))
    return _png(chunks), f"insert chunk {chunks[1][0]!r}"


def mutate_jpeg(blob: bytes, rng: np.random.Generator, seeds: Seeds) -> tuple[bytes, str]:
    """Change the frame header (precision, size, components) or the scan data."""
    data = bytearray(blob)
    sof = [m.start() for m in re.finditer(rb"\xff[\xc0\xc1\xc2]", blob)]
    if not sof or rng.random() < 0.3:
        return mutate_bytes(blob, rng)
    at = sof[0] + 4  # marker 2, length 2, then precision 1, height 2, width 2, count 1
    i = int(rng.integers(0, 4))
    if i == 0:
        data[at] = int(rng.choice([0, 1, 8, 12, 16, 255]))
        return bytes(data), f"SOF precision -> {data[at]}"
    if i == 3:
        data[at + 5] = int(rng.choice([0, 1, 2, 3, 4, 255]))
        return bytes(data), f"SOF components -> {data[at + 5]}"
    new = _interesting(rng) % 65536
    struct.pack_into(">H", data, at + 1 + 2 * (i - 1), new)
    return bytes(data), f"SOF {'height' if i == 1 else 'width'} -> {new}"


def mutate_npy(blob: bytes, rng: np.random.Generator, seeds: Seeds) -> tuple[bytes, str]:
    """Rewrite the ``.npy`` header (shape, dtype, order, version) over the same data."""
    from numpy.lib import format as npy_format

    fh = io.BytesIO(blob)
    try:
        version = npy_format.read_magic(fh)
        header = (
            npy_format.read_array_header_1_0(fh)
            if version == (1, 0)
            else npy_format.read_array_header_2_0(fh)
        )
    except Exception:
        return mutate_bytes(blob, rng)
    body = blob[fh.tell() :]
    shape, fortran, dtype = header
    what = rng.choice(["shape", "shape", "descr", "fortran", "text"])
    d = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape}
    if what == "shape":
        ndim = int(rng.integers(0, 6))
        d["shape"] = tuple(_interesting(rng) if rng.random() < 0.3 else int(rng.integers(0, 300))
                           for _ in range(ndim))  # fmt: skip
    elif what == "descr":
        d["descr"] = str(rng.choice(["|b1", "<i8", ">f8", "<f2", "<c8", "|O", "<U4", "|V8",
                                     "<M8[s]", "|S3", ">u2", "<f16"]))  # fmt: skip
    elif what == "fortran":
        d["fortran_order"] = not fortran
    else:
        text = repr(d).encode("latin1")
        pos = int(rng.integers(0, len(text)))
        text = text[:pos] + bytes([int(rng.integers(32, 127))]) + text[pos + 1 :]
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + 1) + text + b"\n"
        return head + body, f"header text byte {pos} changed"
    out = io.BytesIO()
    try:
        npy_format.write_array_header_1_0(out, d)
    except Exception:
        return mutate_bytes(blob, rng)
    key = {"shape": "shape", "descr": "descr", "fortran": "fortran_order"}[what]
    return out.getvalue() + body, f"header {key} -> {d[key]}"


def mutate_checkpoint(blob: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Change one entry of a checkpoint (a tensor, a config, the reference) and save it."""
    import torch

    if rng.random() < 0.25:
        return mutate_bytes(blob, rng)
    data = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    what = str(rng.choice(["tensor", "tensor", "json", "key", "reference", "bank", "version"]))
    desc = what
    if what == "tensor":
        net = str(rng.choice([k for k in ("generator", "discriminator", "encoder") if data.get(k)]))
        name = list(data[net])[int(rng.integers(0, len(data[net])))]
        t = data[net][name]
        how = str(rng.choice(["nan", "inf", "shape", "dtype", "type", "huge"]))
        if how in ("nan", "inf") and t.is_floating_point() and t.numel():
            t = t.clone()
            t.view(-1)[int(rng.integers(0, t.numel()))] = float(how)
        elif how == "shape":
            t = t.reshape(-1)[: max(0, t.numel() - 1)]
        elif how == "dtype":
            t = t.to(torch.float64 if t.is_floating_point() else torch.int32)
        elif how == "huge" and t.is_floating_point():
            t = t * 1e30
        else:
            t = [1, 2, 3] if rng.random() < 0.5 else "weights"
        data[net][name] = t
        desc = f"{net}.{name}: {how}"
    elif what == "json":
        key = str(rng.choice(["model_config", "preprocess_config", "train_config", "training"]))
        text = data[key]
        choice = int(rng.integers(0, 3))
        if choice == 0:
            cut = int(rng.integers(0, len(text)))
            data[key] = text[:cut]
            desc = f"{key}: cut to {cut} characters"
        elif choice == 1:
            value = [[], 1, "x", None][int(rng.integers(0, 4))]
            data[key] = json.dumps(value)
            desc = f"{key}: {value!r}"
        else:
            obj = json.loads(text)
            desc = f"{key}: unchanged"
            if isinstance(obj, dict) and obj:
                k = list(obj)[int(rng.integers(0, len(obj)))]
                obj[k] = [None, -1, 0, 3, 10**9, "x", 1.5, [], {}, [0, 0]][int(rng.integers(0, 10))]
                desc = f"{key}.{k} -> {obj[k]!r}"
            data[key] = json.dumps(obj)
    elif what == "key":
        key = list(data)[int(rng.integers(0, len(data)))]
        del data[key]
        desc = f"removed {key}"
    elif what == "reference":
        ref = data.get("reference") or {}
        if ref.get("quantiles"):
            name = next(iter(ref["quantiles"]))
            q = ref["quantiles"][name].clone()
            choice = int(rng.integers(0, 3))
            if choice == 0:
                q[0] = float("nan")
            elif choice == 1:
                q = q[:-3]
            else:
                q = torch.flip(q, [0])
            ref["quantiles"][name] = q
            desc = f"reference {name}: {['NaN', 'shorter', 'descending'][choice]}"
        else:
            data["reference"] = {"levels": torch.zeros(3)}
            desc = "reference without quantiles"
    elif what == "bank":
        if data.get("feature_bank"):
            bank = data["feature_bank"]
            key = str(rng.choice(["embeddings", "projection"]))
            t = bank[key]
            bank[key] = t[:, :-1] if rng.random() < 0.5 else t * float("nan")
            desc = f"feature bank {key} changed"
        else:
            data["feature_bank"] = {"embeddings": torch.zeros(4, 8), "projection": torch.zeros(3)}
            desc = "feature bank of the wrong size"
    else:
        data["format_version"] = int(rng.choice([0, 2, -1, 99]))
        desc = f"format_version -> {data['format_version']}"
    buf = io.BytesIO()
    torch.save(data, buf)
    return buf.getvalue(), desc


# ----------------------------------------------------------------------- random arrays

DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64",
          "float16", "float32", "float64", ">u2", ">f4", "complex64"]  # fmt: skip


def random_array(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """An array of any dtype and shape, with NaN, Inf, constants or extremes now and then."""
    ndim = int(rng.choice([1, 2, 2, 3, 3, 3, 4]))
    dims = [int(rng.integers(1, 5)) if i < ndim - 2 else int(rng.integers(0, 140))
            for i in range(ndim)]  # fmt: skip
    if ndim >= 3 and rng.random() < 0.3:
        dims[-1] = int(rng.choice([3, 4]))  # looks like colour samples
    dtype = np.dtype(str(rng.choice(DTYPES)))
    special = str(rng.choice(["noise", "noise", "constant", "nan", "inf", "extreme", "oct"]))
    shape = tuple(dims)
    if dtype.kind == "b":
        arr = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
        arr = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    else:
        arr = (rng.normal(0, 100, shape) + 100).astype(dtype)
    if arr.size and special == "constant":
        arr[...] = arr.flat[0]
    elif arr.size and special in ("nan", "inf") and dtype.kind in "fc":
        arr.flat[int(rng.integers(0, arr.size))] = np.nan if special == "nan" else np.inf
    elif arr.size and special == "extreme" and dtype.kind == "f":
        arr[...] = np.finfo(dtype).max * rng.choice([-1, 1], shape)
    elif special == "oct" and ndim >= 2 and min(shape[-2:]) >= 64:
        rows = np.arange(shape[-2])[:, None]
        band = (rows > shape[-2] // 3) & (rows < shape[-2] // 2)
        arr = (np.where(band, 180, 20) + rng.normal(0, 10, shape)).astype(np.uint8)
    return arr, f"{special} {dtype} {shape}"


def random_spacing(rng: np.random.Generator):
    if rng.random() < 0.5:
        return (None, None, None)
    values = [None, 0.0, -3.0, float("nan"), float("inf"), 1e-9, 1e9, 3.87, 11.7, 120.0]
    return tuple(values[int(rng.integers(0, len(values)))] for _ in range(3))


# ------------------------------------------------------------------------- checks


def check_volume(volume) -> None:
    data = np.asarray(volume.data)
    if data.ndim != 3 or 0 in data.shape:
        raise BadResult(f"volume of shape {data.shape}")
    if data.dtype.kind not in "uif":
        raise BadResult(f"volume dtype {data.dtype}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise BadResult("volume holds NaN/Inf")
    for v in volume.spacing:
        if v is not None and not (np.isfinite(v) and v > 0):
            raise BadResult(f"spacing {volume.spacing}")


def check_preprocessed(pre, shape) -> None:
    s, h, w = shape
    if pre.flat.shape[0] != s or not np.isfinite(pre.flat).all():
        raise BadResult("band of the wrong size or not finite")
    if pre.flat.min() < -1 or pre.flat.max() > 1:
        raise BadResult("band outside [-1, 1]")
    for name in ("ilm", "bm"):
        rows = getattr(pre, name)
        if rows.shape != (s, w) or not np.isfinite(rows).all():
            raise BadResult(f"{name} of shape {rows.shape} or not finite")
        if rows.min() < 0 or rows.max() > h - 1:
            raise BadResult(f"{name} outside the image")


def check_scored(result, tmp: Path) -> None:
    from napari_anogan.io import write_json
    from napari_anogan.pipeline import summary_dict

    for name in ("residual_score", "discrimination_score", "anomaly_score"):
        values = np.asarray(result.patches[name])
        if values.size and not np.isfinite(values).all():
            raise BadResult(f"{name} not finite")
    if not np.isfinite(np.asarray(result.residual)).all():
        raise BadResult("residual heatmap not finite")
    path = write_json(tmp / "summary.json", summary_dict(result))

    def refuse(constant: str):
        raise BadResult(f"summary holds {constant}")

    json.loads(path.read_text(), parse_constant=refuse)


# -------------------------------------------------------------------------- targets


class Runner:
    """Runs cases; holds the seeds, the model and the switches."""

    def __init__(self, seed: int, score_every: int, folder: Path, keep: Path | None) -> None:
        self.seed = seed
        self.score_every = score_every
        self.folder = folder
        self.keep = keep
        self.seeds = Seeds(folder / "seeds")
        self._model = None
        try:
            from napari_anogan import _reader

            self.reader = _reader
        except Exception:  # no Qt here: the napari reader is not fuzzed
            self.reader = None

    @property
    def model(self):
        if self._model is None:
            from napari_anogan.checkpoint import load_checkpoint

            self._model = load_checkpoint(SAMPLES / "anogan_small.pt")
        return self._model

    # the stages a file goes through
    def _file(self, case: Case, path: Path, rng: np.random.Generator) -> None:
        from napari_anogan.io import read_volume

        if self.reader is not None and rng.random() < 0.3:
            case.stages.append("napari reader")
            reader = self.reader.get_reader(str(path))
            if reader is not None:
                for data, _meta, kind in reader(str(path)):
                    if kind not in ("image", "labels") or np.asarray(data).size == 0:
                        raise BadResult(f"napari layer {kind} of size {np.asarray(data).size}")
            return
        lazy = bool(rng.random() < 0.5)
        case.stages.append("read lazy" if lazy else "read")
        volume = read_volume(path, lazy=lazy)
        if lazy:  # NaN/Inf are reported where the values are used: preprocessing
            volume.data = np.asarray(volume.data)
            finite = volume.data.dtype.kind != "f" or bool(np.isfinite(volume.data).all())
            if finite:
                check_volume(volume)
            self._preprocess_and_score(case, volume, rng, must_fail=not finite)
            return
        check_volume(volume)
        self._preprocess_and_score(case, volume, rng)

    def _preprocess_and_score(
        self, case: Case, volume, rng: np.random.Generator, must_fail: bool = False
    ) -> None:
        from napari_anogan.preprocess import preprocess_volume

        if np.asarray(volume.data).size > 4_000_000:
            return
        case.stages.append("preprocess")
        pre = preprocess_volume(volume)
        if must_fail:
            raise BadResult("NaN/Inf of a lazily read volume were not reported")
        check_preprocessed(pre, pre.geometry.raw_shape)
        if self.score_every and rng.integers(0, self.score_every) == 0:
            self._score(case, volume)

    def _score(self, case: Case, volume) -> None:
        from napari_anogan.events import drain
        from napari_anogan.pipeline import ScoreSettings, score_volume

        if volume.data.shape[0] > 3 or volume.data.shape[1] * volume.data.shape[2] > 600 * 600:
            return
        case.stages.append("score")
        settings = ScoreSettings(mode="encoder", batch_size=64, device="cpu", stride=32)
        result = drain(score_volume(volume, self.model, settings))
        check_scored(result, self.folder)

    def case_file(self, case: Case, rng: np.random.Generator, kind: str) -> None:
        names = {
            "tiff": [n for n in self.seeds.blobs if n.endswith(".tif")],
            "png": [n for n in self.seeds.blobs if n.endswith((".png", ".bmp"))],
            "jpeg": [n for n in self.seeds.blobs if n.endswith((".jpg", ".jpeg"))],
            "npy": [n for n in self.seeds.blobs if n.endswith(".npy")],
        }[kind]
        name = names[int(rng.integers(0, len(names)))]
        blob = self.seeds.blobs[name]
        mutate = {"tiff": mutate_tiff, "png": mutate_png, "jpeg": mutate_jpeg, "npy": mutate_npy}
        if rng.random() < 0.3:
            blob, how = mutate_bytes(blob, rng)
        else:
            blob, how = mutate[kind](blob, rng, self.seeds)
        suffix = (
            "".join(Path(name).suffixes[-2:]) if name.endswith(".ome.tif") else Path(name).suffix
        )
        if rng.random() < 0.05:  # the wrong suffix for the content
            suffix = str(rng.choice([".tif", ".png", ".npy", ".jpg"]))
        case.mutation = f"{name}: {how}"
        path = self._write(case, blob, f"case{suffix}")
        self._file(case, path, rng)

    def case_checkpoint(self, case: Case, rng: np.random.Generator) -> None:
        from napari_anogan.checkpoint import load_checkpoint

        names = sorted(self.seeds.checkpoints)
        name = names[int(rng.integers(0, len(names)))]
        blob, how = mutate_checkpoint(self.seeds.checkpoints[name], rng)
        case.mutation = f"{name}: {how}"
        path = self._write(case, blob, "model.pt")
        case.stages.append("load_checkpoint")
        model = load_checkpoint(path)
        if self.score_every and rng.integers(0, max(1, self.score_every // 4)) == 0:
            from napari_anogan.events import drain
            from napari_anogan.io import Volume
            from napari_anogan.pipeline import ScoreSettings, score_volume

            case.stages.append("score")
            settings = ScoreSettings(mode="encoder", batch_size=64, device="cpu", stride=32)
            volume = Volume(self.seeds.small[:1], spacing=(None, 7.74, 23.4), name="x")
            result = drain(score_volume(volume, model, settings))
            check_scored(result, self.folder)

    def case_array_file(self, case: Case, rng: np.random.Generator) -> None:
        import tifffile
        from PIL import Image

        arr, how = random_array(rng)
        suffix = str(rng.choice([".npy", ".tif", ".ome.tif", ".png"]))
        case.mutation = f"{how} as {suffix}"
        buf = io.BytesIO()
        try:
            if suffix == ".npy":
                np.save(buf, arr, allow_pickle=False)
            elif suffix == ".png":
                Image.fromarray(arr).save(buf, format="PNG")
            else:
                tifffile.imwrite(buf, arr, ome=suffix == ".ome.tif")
        except Exception:
            case.stages.append("not writable")
            return  # the writer refuses the array: nothing to read
        path = self._write(case, buf.getvalue(), f"array{suffix}")
        self._file(case, path, rng)

    def case_array(self, case: Case, rng: np.random.Generator) -> None:
        from napari_anogan.io import Volume

        if rng.random() < 0.5:
            from napari_anogan.datasets.synthetic import make_volume

            s, h, w = (
                int(rng.integers(1, 3)),
                int(rng.integers(64, 260)),
                int(rng.integers(32, 300)),
            )
            syn = make_volume(s, h, w, seed=int(rng.integers(0, 2**31)))
            arr = syn.data.astype(str(rng.choice(["uint8", "uint16", "float32", "int16"])))
            how = str(rng.choice(["none", "blank slice", "nan", "constant rows", "inverted",
                                  "salt", "tiny range"]))  # fmt: skip
            if how == "blank slice":
                arr[0] = 0
            elif how == "nan" and arr.dtype.kind == "f":
                arr[0, 0, 0] = np.nan
            elif how == "constant rows":
                arr[:, : h // 2] = arr.max()
            elif how == "inverted":
                arr = arr.max() - arr
            elif how == "salt":
                arr.flat[rng.integers(0, arr.size, arr.size // 50)] = arr.max()
            elif how == "tiny range" and arr.dtype.kind == "f":
                arr = 1.0 + arr * 1e-7
            case.mutation = f"synthetic {arr.dtype} {arr.shape}, {how}"
        else:
            arr, how = random_array(rng)
            case.mutation = how
        volume = Volume(arr, spacing=random_spacing(rng), name="fuzz")
        case.mutation += f", spacing {volume.spacing}"
        self._preprocess_and_score(case, volume, rng)

    def _write(self, case: Case, blob: bytes, name: str) -> Path:
        folder = self.folder / "case"
        folder.mkdir(exist_ok=True)
        path = folder / name
        path.write_bytes(blob)
        if self.keep is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.keep / f"case{case.number}-{name}")
        return path

    # one case
    TARGETS: ClassVar[dict[str, int]] = {
        "tiff": 24,
        "png": 10,
        "jpeg": 10,
        "npy": 10,
        "checkpoint": 10,
        "array file": 16,
        "array": 20,
    }

    def run_case(self, number: int, timeout: float, targets: list[str] | None = None) -> Case:
        rng = np.random.default_rng([self.seed, number])
        target = pick_target(rng, targets)
        case = Case(number, target)
        shutil.rmtree(self.folder / "case", ignore_errors=True)

        def alarm(signum, frame):
            raise CaseTimeout(f"no result after {timeout:g} s")

        from napari_anogan.errors import AnoganError

        old = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if target == "checkpoint":
                self.case_checkpoint(case, rng)
            elif target == "array file":
                self.case_array_file(case, rng)
            elif target == "array":
                self.case_array(case, rng)
            else:
                self.case_file(case, rng, target)
            case.outcome = "ok"
        except AnoganError as exc:
            case.outcome, case.error = "clean", type(exc).__name__
        except (Exception, CaseTimeout) as exc:  # everything else is a crash
            case.outcome = "crash"
            case.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if "napari_anogan" in f.filename] or frames
            last = ours[-1] if ours else None
            case.where = f"{Path(last.filename).name}:{last.lineno} {last.name}" if last else ""
            case.trace = "".join(traceback.format_exception(exc))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        return case


def pick_target(rng: np.random.Generator, targets: list[str] | None = None) -> str:
    """The target of a case: the first draw of its generator."""
    names = targets or list(Runner.TARGETS)
    weights = np.array([Runner.TARGETS[n] for n in names], float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


@contextlib.contextmanager
def _quiet():
    """No log lines or warnings from the cases (restored afterwards)."""
    loggers = [logging.getLogger(n) for n in ("napari_anogan", "tifffile")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _worker(conn, seed: int, score_every: int, folder: str, keep, memory_limit: int) -> None:
    """Run the cases the parent sends, in a process of their own (hangs and hard crashes
    of native code end this process, not the fuzzing)."""
    limit_memory(memory_limit)
    with _quiet():
        runner = Runner(seed, score_every, Path(folder), keep)
        conn.send("ready")
        while True:
            job = conn.recv()
            if job is None:
                return
            number, timeout, targets = job
            conn.send(runner.run_case(number, timeout, targets).__dict__)


class _Isolated:
    """A worker process running cases, replaced when a case hangs or kills it."""

    def __init__(self, seed, score_every, folder: Path, keep, memory_limit: int) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("fork")
        self.args = (seed, score_every, str(folder), keep, memory_limit)
        self.proc = None
        self.conn = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        if not parent.poll(600) or parent.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
        self.proc = self.conn = None

    def run_case(self, number: int, timeout: float, targets) -> Case:
        if self.proc is None:
            self._start()
        self.conn.send((number, timeout, targets))
        limit = 2 * timeout + 30  # the case's own alarm fires first unless native code hangs
        try:
            if self.conn.poll(limit):
                return Case(**self.conn.recv())
            error = f"CaseTimeout: no result after {limit:g} s (native code hung; killed)"
        except (EOFError, OSError):
            self.proc.join(5)
            code = self.proc.exitcode
            error = f"WorkerDied: the process ended with {code} (a native crash or out of memory)"
        self._stop()
        target = pick_target(np.random.default_rng([self.args[0], number]), targets)
        return Case(number, target, outcome="crash", error=error)

    def close(self) -> None:
        if self.proc is not None and self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.send(None)
            self.proc.join(10)
        self._stop()


def limit_memory(limit: int) -> None:
    """Cap the address space, so a huge allocation fails fast (and cannot swap the host)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run(
    examples: int,
    seed: int = 0,
    *,
    start: int = 0,
    score_every: int = 40,
    timeout: float = 60.0,
    targets: list[str] | None = None,
    keep: Path | None = None,
    progress: bool = False,
    isolate: bool = True,
    memory_limit: int = MEMORY_LIMIT,
) -> dict:
    """Run cases ``start .. start + examples - 1``; return the report (see the module doc).

    ``isolate``: run the cases in a worker process under ``memory_limit``, replaced when a
    case hangs in native code or kills it; else in this process (no memory limit).
    """
    t0 = time.perf_counter()
    by_target: dict[str, Counter] = {}
    crashes = []
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp, _quiet():
        runner: Any
        if isolate:
            runner = _Isolated(seed, score_every, Path(tmp), keep, memory_limit)
        else:
            runner = Runner(seed, score_every, Path(tmp), keep)
        try:
            for number in range(start, start + examples):
                case = runner.run_case(number, timeout, targets)
                counts = by_target.setdefault(case.target, Counter())
                counts[case.outcome] += 1
                if case.outcome == "clean":
                    counts[f"clean {case.error}"] += 1
                for stage in case.stages:
                    counts[f"reached {stage}"] += 1
                if case.outcome == "crash":
                    crashes.append(
                        {
                            "case": number,
                            "target": case.target,
                            "mutation": case.mutation,
                            "stages": case.stages,
                            "error": case.error,
                            "where": case.where,
                            "reproduce": (
                                f"python scripts/fuzz_inputs.py --seed {seed} --case {number}"
                            ),
                        }
                    )
                if progress and (number - start + 1) % 100 == 0:
                    done = number - start + 1
                    print(f"{done} cases, {len(crashes)} crashes", file=sys.stderr, flush=True)
        finally:
            if isolate:
                runner.close()
    kinds = Counter(f"{c['error'].split(':')[0]} at {c['where']}" for c in crashes)
    return {
        "seed": seed,
        "cases": examples,
        "first_case": start,
        "seconds": round(time.perf_counter() - t0, 1),
        "by_target": {t: dict(sorted(c.items())) for t, c in sorted(by_target.items())},
        "crashes": len(crashes),
        "crash_kinds": dict(kinds.most_common()),
        "crash_cases": crashes[:200],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=1000, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of every case")
    parser.add_argument("--start", type=int, default=0, help="number of the first case")
    parser.add_argument("--case", type=int, help="run this one case, print its traceback")
    parser.add_argument(
        "--score-every",
        type=int,
        default=40,
        help="score about one in N readable inputs (0: never)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--targets", nargs="+", choices=sorted(Runner.TARGETS))
    parser.add_argument("--keep", type=Path, help="copy every mutated file into this folder")
    parser.add_argument(
        "--memory-limit", type=float, default=MEMORY_LIMIT / 2**30, help="GiB of address space"
    )
    args = parser.parse_args()
    memory_limit = int(args.memory_limit * 2**30)
    if args.case is not None:
        limit_memory(memory_limit)
        logging.basicConfig(level=logging.WARNING)
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            runner = Runner(args.seed, args.score_every, Path(tmp), args.keep)
            case = runner.run_case(args.case, args.timeout, args.targets)
        print(json.dumps({k: v for k, v in case.__dict__.items() if k != "trace"}, indent=2))
        if case.trace:
            print(case.trace, file=sys.stderr)
        return 1 if case.outcome == "crash" else 0
    report = run(
        args.examples,
        args.seed,
        start=args.start,
        score_every=args.score_every,
        timeout=args.timeout,
        targets=args.targets,
        keep=args.keep,
        progress=True,
        memory_limit=memory_limit,
    )
    print(json.dumps(report, indent=2))
    return 1 if report["crashes"] else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
