"""The sliding window: the last N frames' feature vectors as one model input."""

from __future__ import annotations

import numpy as np


class FeatureWindow:
    """A ring buffer of the newest ``length`` vectors of ``size`` values.

    ``array()`` returns them oldest first as a fresh (length, size) float32 array; ``full`` says
    whether ``length`` vectors have been pushed since the last ``clear()``.
    """

    def __init__(self, length: int, size: int | tuple[int, ...], dtype=np.float32):
        shape = (size,) if isinstance(size, int) else tuple(size)
        if length < 1 or min(shape) < 1:
            raise ValueError(f"window length and size must be positive, got {length} x {size}")
        self._buffer = np.zeros((length, *shape), dtype=dtype)
        self._next = 0
        self._count = 0

    @property
    def length(self) -> int:
        return self._buffer.shape[0]

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """The shape of one pushed vector (or image)."""
        return self._buffer.shape[1:]

    @property
    def full(self) -> bool:
        return self._count >= self.length

    def __len__(self) -> int:
        return min(self._count, self.length)

    def push(self, vector: np.ndarray) -> None:
        self._buffer[self._next] = vector
        self._next = (self._next + 1) % self.length
        self._count += 1

    def clear(self) -> None:
        self._buffer[:] = 0
        self._next = 0
        self._count = 0

    def array(self) -> np.ndarray:
        """Oldest first; before the window is full the missing older rows are zeros."""
        return np.roll(self._buffer, -self._next, axis=0)
