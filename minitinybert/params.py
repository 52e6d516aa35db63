"""Parameters in one flat buffer with named views.

The optimizer, gradient clipping and checkpointing each work on `ParamSet.data`, one contiguous
array; the model reads and writes the same memory through per-tensor views. Tensors that are
used together (a layer's query, key and value weights) are laid out next to each other, so that
the model can also view them as one larger matrix and give BLAS one big product instead of three.
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
