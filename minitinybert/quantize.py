"""Symmetric quantization of weight rows for the runtime file (export --dtypes int8, --embedding-bits 4).

int8: a float32 scale per row, max|row| / 127. 4 bits: q in [-7, 7], two a byte (low nibble first), a float32
scale per row (max|row| / 7) or a float16 scale per group of a row's values: the runtime (minitinybert/runtime.py)
reads both. The formats are in docs/formats.md.
"""
from __future__ import annotations

import numpy as np


def quantize_rows(weight: np.ndarray, levels: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per row: (q int8 in [-levels, levels], scale float32) with weight ~= q * scale[:, None],
    scale = max|row| / levels (0 for a row of zeros, whose q are 0). levels 127: int8; 7: 4 bits."""
    w = np.asarray(weight, dtype=np.float32)
    scale = np.abs(w).max(axis=1) / float(levels)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(w / safe[:, None]), -levels, levels).astype(np.int8)
    return q, scale.astype(np.float32)


def quantize_groups(weight: np.ndarray, levels: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per group of a row's values: (q int8 (R, C) in [-levels, levels], scale float16 (R, G)) with
    weight ~= q * (each scale repeated over its group). G = ceil(C / group) groups of ceil(C / G) values (at most
    `group`, every group holding some; the last may be shorter), the rule the runtime reads G back with. scale =
    max|group| / levels rounded to float16, and q made from the rounded scale (0 where it is 0)."""
    w = np.asarray(weight, dtype=np.float32)
    rows, width = w.shape
    count = -(-width // group)
    size = -(-width // count)
    groups = np.pad(w, ((0, 0), (0, count * size - width))).reshape(rows, count, size)
    scale = (np.abs(groups).max(axis=2) / np.float32(levels)).astype(np.float16)
    if not np.all(np.isfinite(scale)):
        raise ValueError(f"a group's largest value exceeds float16's range times {levels}: cannot scale it")
    full = np.repeat(scale.astype(np.float32), size, axis=1)[:, :width]
    q = np.clip(np.rint(w / np.where(full > 0, full, np.float32(1))), -levels, levels).astype(np.int8)
    return q, scale


def quantize_rows_int4(weight: np.ndarray, group: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit, packed: (uint8 (R, ceil(C / 2)), scales). q in [-7, 7]; group 0: a float32 scale a row
    (R,), max|row| / 7, as quantize_rows (q 0 for a row of zeros); group N: float16 scales (R, G) of groups of
    at most N values (quantize_groups). Byte j holds q[2j] in its low nibble and q[2j + 1] in its high one,
    two's complement (an odd C's last high nibble is 0, padding)."""
    q, scale = quantize_groups(weight, 7, group) if group else quantize_rows(weight, levels=7)
    nibbles = np.pad(q, ((0, 0), (0, q.shape[1] % 2))).view(np.uint8) & 15
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4), scale
