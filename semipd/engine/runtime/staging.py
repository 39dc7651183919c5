"""`Staging`: numpy arrays to the device in one host-to-device copy through a reused pinned buffer.

A step's inputs (token ids, positions, slots, lengths, block tables, sampling parameters)
are packed side by side into one pinned host buffer and copied with one asynchronous
``copy_``; the device tensors are typed views of the copied bytes. The pinned buffer is
reused from step to step: before it is overwritten, the event recorded after the previous
copy is waited on (normally long done, since every step reads its sampled tokens back).
On CPU the same packing runs over plain memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_ALIGN = 16
_TORCH_DTYPES = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
                 np.dtype(np.float32): torch.float32}


def packed_layout(nbytes: Sequence[int]) -> tuple[list[int], int]:
    """Byte offsets of consecutive sections of the given sizes, each aligned to 16 bytes, and the total."""
    offsets, total = [], 0
    for n in nbytes:
        offsets.append(total)
        total += -(-n // _ALIGN) * _ALIGN
    return offsets, total


def typed_view(buffer: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A `dtype` tensor of `shape` over ``buffer[offset:]`` (a uint8 tensor; offset 16-byte aligned)."""
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return buffer[offset:offset + size].view(dtype).view(shape)


class Staging:
    """One reusable host buffer (pinned on CUDA) and the event of its last copy."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pin = device.type == "cuda"
        self._host = torch.empty(0, dtype=torch.uint8, pin_memory=self._pin)
        self._event = torch.cuda.Event() if self._pin else None
        self._pending = False

    def host(self, nbytes: int) -> np.ndarray:
        """The first `nbytes` of the host buffer as a writable uint8 array, once the last copy out of it is done."""
        if self._pending:
            self._event.synchronize()
            self._pending = False
        if self._host.numel() < nbytes:
            self._host = torch.empty(max(nbytes, 2 * self._host.numel(), 4096), dtype=torch.uint8,
                                     pin_memory=self._pin)
        return self._host.numpy()[:nbytes]

    def copy_to(self, dst: torch.Tensor, nbytes: int) -> None:
        """Copy the first `nbytes` of the host buffer into the uint8 device tensor `dst` (asynchronous)."""
        dst[:nbytes].copy_(self._host[:nbytes], non_blocking=True)
        if self._event is not None:
            self._event.record()
            self._pending = True

    def to_device(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Device copies of `arrays` (int64, int32 or float32), made by one host-to-device copy."""
        offsets, total = packed_layout([a.nbytes for a in arrays])
        host = self.host(total)
        for a, off in zip(arrays, offsets, strict=True):
            host[off:off + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        dev = torch.empty(total, dtype=torch.uint8, device=self.device)
        self.copy_to(dev, total)
        return [typed_view(dev, off, _TORCH_DTYPES[a.dtype], a.shape) for a, off in zip(arrays, offsets, strict=True)]
