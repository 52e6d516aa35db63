"""Parameters in one flat buffer with named views.

The optimizer, gradient clipping and checkpointing each work on `ParamSet.data`, one contiguous
array; the model reads and writes the same memory through per-tensor views. Tensors that are
used together (a layer's query, key and value weights) are laid out next to each other, so that
the model can also view them as one larger matrix and give BLAS one big product instead of three.
`assign_tensors` fills a ParamSet from named tensors (a checkpoint's, a state dict), checking each.
"""
from __future__ import annotations

import numpy as np


class ParamSet:
    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype=np.float32, data: np.ndarray | None = None):
        self.layout: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for name, shape in shapes.items():
            shape = tuple(int(s) for s in shape)
            self.layout[name] = (offset, shape)
            offset += int(np.prod(shape))
        self.size = offset
        if data is None:
            data = np.zeros(offset, dtype=dtype)
        if data.shape != (offset,):
            raise ValueError(f"flat buffer has shape {data.shape}, layout needs ({offset},)")
        self.data = data
        self.views = {name: data[off:off + int(np.prod(shape))].reshape(shape)
                      for name, (off, shape) in self.layout.items()}

    @property
    def dtype(self):
        return self.data.dtype

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def __contains__(self, name: str) -> bool:
        return name in self.views

    def names(self):
        return list(self.layout)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (_, shape) in self.layout.items()}

    def span(self, first: str, last: str) -> np.ndarray:
        """The flat slice from the start of `first` to the end of `last` (they must be laid out in order)."""
        start = self.layout[first][0]
        off, shape = self.layout[last]
        end = off + int(np.prod(shape))
        if end <= start:
            raise ValueError(f"{last} is not laid out after {first}")
        return self.data[start:end]

    def zeros_like(self, dtype=None) -> "ParamSet":
        return ParamSet(self.shapes(), dtype=dtype or self.dtype)

    def astype(self, dtype) -> "ParamSet":
        return ParamSet(self.shapes(), data=self.data.astype(dtype))

    def copy(self) -> "ParamSet":
        return ParamSet(self.shapes(), data=self.data.copy())


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file and the tensor."""


FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def assign_tensors(params: ParamSet, tensors: dict[str, np.ndarray], source: str,
                   allow_missing: tuple[str, ...] = ()) -> None:
    """Copy tensors (already in the ParamSet's names) into the flat buffer, checking each: every
    parameter present (but those starting with `allow_missing`), float, of its shape, finite.
    `source` names where they came from in the errors."""
    missing = [n for n in params.names() if n not in tensors and not n.startswith(allow_missing)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WeightsError(f"{source}: missing tensor(s) {shown}")
    for name, view in params.views.items():
        if name not in tensors:
            continue
        value = tensors[name]
        if value.dtype.type not in FLOAT_DTYPES:
            raise WeightsError(f"{source}: tensor {name!r} has dtype {value.dtype}, expected a float type")
        if value.shape != view.shape:
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(value.shape)}, "
                               f"the config says {view.shape}")
        if not np.all(np.isfinite(value)):
            raise WeightsError(f"{source}: tensor {name!r} holds NaN or infinite values")
        view[...] = value
