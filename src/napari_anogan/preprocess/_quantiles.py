"""Exact percentiles of data that arrives in chunks (bounded memory).

:func:`chunked_percentiles` gives bit for bit what ``np.percentile(all_data, q)`` gives
(``method="linear"``, ``q`` a sequence), without ever holding all the data: the order
statistics it needs are found by radix selection on an order-preserving integer key of
the values (16 bits per pass over the data, one pass for 8- and 16-bit images, two for
float32, four for float64), then interpolated with numpy's own formula. Counts are
integers, so the result does not depend on how the data is cut into chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

__all__ = ["chunked_percentiles"]

_DIGIT_BITS = 16
_BLOCK = 1 << 22  # elements keyed at a time (bounds the temporary key arrays)


def _keys(values: np.ndarray) -> np.ndarray:
    """Map values to unsigned integers in the same order (floats: IEEE-754 bit trick)."""
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(np.uint64)
    if kind == "u":
        return values.astype(np.uint64)
    if kind == "i":
        # shift by 2**(bits-1): int8 -> [0, 255] etc. (int64 wraps, which keeps the order)
        offset = np.uint64(1 << (values.dtype.itemsize * 8 - 1))
        return values.astype(np.int64).view(np.uint64) + offset
    if kind == "f":
        bits = values.dtype.itemsize * 8
        u = values.view(f"u{values.dtype.itemsize}").astype(np.uint64)
        sign = np.uint64(1 << (bits - 1))
        mask = np.uint64((1 << bits) - 1)
        return np.where(u & sign, ~u & mask, u | sign)
    raise TypeError(f"percentiles of dtype {values.dtype} are not supported")


def _from_key(key: int, dtype: np.dtype) -> np.generic:
    """Inverse of :func:`_keys` for one key."""
    kind = dtype.kind
    if kind == "u":
        return dtype.type(key)
    if kind == "i":
        offset = 1 << (dtype.itemsize * 8 - 1)
        value = np.array([(key - offset) % (1 << 64)], np.uint64).view(np.int64)[0]
        return dtype.type(value)
    bits = dtype.itemsize * 8
    sign = 1 << (bits - 1)
    u = key ^ sign if key & sign else ~key & ((1 << bits) - 1)
    return np.array([u], f"u{dtype.itemsize}").view(dtype)[0]


def _key_bits(dtype: np.dtype) -> int:
    return dtype.itemsize * 8


def _order_statistics(
    chunks: Callable[[], Iterable[np.ndarray]], ranks: Sequence[int], dtype: np.dtype
) -> dict[int, np.generic]:
    """Values of rank ``r`` (0-based, ascending) of all the data, for every ``r``."""
    bits = _key_bits(dtype)
    digit_bits = min(_DIGIT_BITS, bits)
    prefix = dict.fromkeys(ranks, 0)  # key bits fixed so far, per rank
    left = {r: int(r) for r in ranks}  # rank within the elements sharing the prefix
    done_bits = 0
    while done_bits < bits:
        step = min(digit_bits, bits - done_bits)
        shift = bits - done_bits - step
        wanted = sorted(set(prefix.values()))
        hist = {p: np.zeros(1 << step, np.int64) for p in wanted}
        for chunk in chunks():
            flat = np.asarray(chunk).reshape(-1)
            for lo in range(0, flat.size, _BLOCK):
                k = _keys(flat[lo : lo + _BLOCK])
                digit = ((k >> np.uint64(shift)) & np.uint64((1 << step) - 1)).astype(np.intp)
                if done_bits == 0:
                    hist[0] += np.bincount(digit, minlength=1 << step)
                    continue
                top = k >> np.uint64(shift + step)
                for p in wanted:
                    sel = digit[top == np.uint64(p)]
                    if sel.size:
                        hist[p] += np.bincount(sel, minlength=1 << step)
        for r in ranks:
            cum = np.cumsum(hist[prefix[r]])
            d = int(np.searchsorted(cum, left[r], side="right"))
            left[r] -= int(cum[d - 1]) if d else 0
            prefix[r] = (prefix[r] << step) | d
        done_bits += step
    return {r: _from_key(prefix[r], dtype) for r in ranks}


def chunked_percentiles(
    chunks: Callable[[], Iterable[np.ndarray]], q: Sequence[float], *, n: int | None = None
) -> np.ndarray:
    """``np.percentile(concatenated chunks, q)`` computed chunk by chunk, bit for bit.

    Parameters
    ----------
    chunks : callable returning an iterable of ndarray
        Called once per pass over the data (one to four passes, plus one to count);
        each call must yield the same arrays (any shapes, one real dtype, no NaN).
    q : sequence of float
        Percentiles in [0, 100].
    n : int, optional
        Number of values, if known (saves the counting pass).

    Returns
    -------
    (len(q),) ndarray
        Same dtype and values as ``np.percentile(data, list(q))``.

    Raises
    ------
    ValueError
        If there is no data.

    Examples
    --------
    >>> data = np.random.default_rng(0).normal(size=(5, 40, 30)).astype(np.float32)
    >>> got = chunked_percentiles(lambda: (data[i : i + 2] for i in range(0, 5, 2)), [1, 99.9])
    >>> np.array_equal(got, np.percentile(data, [1, 99.9]))
    True
    """
    dtype = None
    count = 0
    for chunk in chunks():
        chunk = np.asarray(chunk)
        dtype = chunk.dtype
        count += chunk.size
        if n is not None:
            break  # only the dtype is needed
    n = count if n is None else int(n)
    if n == 0 or dtype is None:
        raise ValueError("no data to take percentiles of")
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    # numpy's "linear" method (Hyndman & Fan 7), step by step as in np.percentile
    quantiles = np.true_divide(np.asarray(list(q), dtype=np.float64), 100)
    virtual = (n - 1) * quantiles
    prev = np.floor(virtual)
    nxt = prev + 1
    above = virtual >= n - 1
    prev[above] = -1
    nxt[above] = -1
    below = virtual < 0
    prev[below] = 0
    nxt[below] = 0
    prev_i = prev.astype(np.intp)
    next_i = nxt.astype(np.intp)
    gamma = np.asanyarray(virtual - prev_i, dtype=virtual.dtype)
    ranks = sorted({int(i) % n for i in (*prev_i, *next_i)})
    stats = _order_statistics(chunks, ranks, dtype)
    a = np.array([stats[int(i) % n] for i in prev_i], dtype=dtype)
    b = np.array([stats[int(i) % n] for i in next_i], dtype=dtype)
    diff_b_a = b - a
    result = np.add(a, diff_b_a * gamma)
    np.subtract(
        b,
        diff_b_a * (1 - gamma),
        out=result,
        where=gamma >= 0.5,
        casting="unsafe",
        dtype=type(result.dtype),
    )
    return result
