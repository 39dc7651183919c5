"""`BlockAllocator`: the one owner of the paged KV cache's blocks.

A request holds the ids of its blocks in ``request.block_ids``; slot ``i`` of the request
(token position ``i``) lives in block ``block_ids[i // block_size]``. The allocator is the
only code that adds to or clears that list, and it does so under one lock, because the
prefill worker and the decode worker allocate concurrently (the paper's atomic allocation).

The watermark: prefill admissions (`allocate` with ``use_watermark=True``) must leave
``watermark`` blocks free, so that requests already decoding can still grow by a slot per
step; decode growth (`append_slot`) may use the last free block.

Fences: a worker that launches a step before reading the last one (overlapped scheduling)
may finish, abort or preempt a request whose blocks a launched step still reads or writes,
while another stream (Semi-PD's prefill) could take them at once. ``free(request, fence=n)``
then parks the blocks until ``release(n)``, which the worker calls once its step ``n`` is done.
"""

from __future__ import annotations

import threading

from semipd.sched.request import Request

_FENCED = "\x00fenced"
"""Owner of blocks parked behind a fence (no request id looks like it)."""


class BlockAllocator:
    """Fixed pool of ``num_blocks`` KV blocks of ``block_size`` token slots each."""

    def __init__(self, num_blocks: int, block_size: int, watermark: int = 0) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if not 0 <= watermark < num_blocks:
            raise ValueError(f"watermark must be in [0, num_blocks), got {watermark}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark = watermark
        # Popped from the end: block 0 is handed out first.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._owner: list[str | None] = [None] * num_blocks
        self._fenced: dict[int, list[int]] = {}
        """fence -> blocks freed behind it, not yet back in the pool."""
        self._lock = threading.Lock()

    # -- queries ---------------------------------------------------------------------
    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold `num_tokens` token slots."""
        return -(-num_tokens // self.block_size)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, in [0, 1]."""
        return self.num_used / self.num_blocks

    def capacity_tokens(self) -> int:
        """Token slots in the whole pool."""
        return self.num_blocks * self.block_size

    def fits_alone(self, num_tokens: int) -> bool:
        """Whether `num_tokens` slots fit in an otherwise empty pool, watermark included."""
        return self.blocks_needed(num_tokens) + self.watermark <= self.num_blocks

    def can_allocate(self, request: Request, num_tokens: int, use_watermark: bool = True) -> bool:
        """Whether `allocate(request, num_tokens, use_watermark)` would succeed now."""
        missing = self.blocks_needed(num_tokens) - len(request.block_ids)
        reserve = self.watermark if use_watermark else 0
        return missing <= 0 or len(self._free) - missing >= reserve

    # -- changes ---------------------------------------------------------------------
    def allocate(self, request: Request, num_tokens: int, use_watermark: bool = True) -> bool:
        """Make `request` hold slots for its first `num_tokens` tokens (a prompt or a chunk's end).

        All-or-nothing: returns False and changes nothing if the missing blocks are not free
        (leaving ``watermark`` blocks when `use_watermark`)."""
        with self._lock:
            missing = self.blocks_needed(num_tokens) - len(request.block_ids)
            if missing <= 0:
                return True
            reserve = self.watermark if use_watermark else 0
            if len(self._free) - missing < reserve:
                return False
            self._take(request, missing)
            return True

    def append_slot(self, request: Request) -> bool:
        """Make room for one more token (a decode step writes the K/V of ``num_tokens``
        slots). Takes a block only at a block boundary; False when none is free."""
        with self._lock:
            if len(request.block_ids) * self.block_size >= request.num_tokens:
                return True
            if not self._free:
                return False
            self._take(request, 1)
            return True

    @property
    def num_fenced(self) -> int:
        """Blocks freed behind a fence, not yet back in the pool."""
        return sum(len(b) for b in self._fenced.values())

    def free(self, request: Request, fence: int | None = None) -> int:
        """Return every block of `request` to the pool (or, with `fence`, park them until
        ``release(fence)``); returns how many.

        Raises RuntimeError (changing nothing) if one of them is not held by this request:
        a double free, or blocks of another request or another pool."""
        with self._lock:
            blocks = request.block_ids
            if not blocks:
                return 0
            owner, rid = self._owner, request.rid
            if (not all(type(b) is int for b in blocks) or min(blocks) < 0 or max(blocks) >= self.num_blocks
                    or any(owner[b] != rid for b in blocks) or len(set(blocks)) != len(blocks)):
                raise RuntimeError(f"request {rid}: its block table holds blocks it does not own in this pool "
                                   f"(double free, or blocks of another request or pool)")
            request.block_ids = []
            if fence is not None:
                for b in blocks:
                    owner[b] = _FENCED
                self._fenced.setdefault(fence, []).extend(blocks)
                return len(blocks)
            for b in blocks:
                owner[b] = None
            self._free.extend(reversed(blocks))
            return len(blocks)

    def release(self, upto: int) -> int:
        """Return the blocks parked behind fences ``<= upto`` to the pool; returns how many."""
        with self._lock:
            done = [f for f in self._fenced if f <= upto]
            n = 0
            for f in done:
                blocks = self._fenced.pop(f)
                for b in blocks:
                    self._owner[b] = None
                self._free.extend(reversed(blocks))
                n += len(blocks)
            return n

    def _take(self, request: Request, n: int) -> None:
        taken = self._free[-n:]
        del self._free[-n:]
        taken.reverse()
        for b in taken:
            self._owner[b] = request.rid
        request.block_ids.extend(taken)

    def status(self) -> dict[str, float | int]:
        """Size, free blocks and usage, for status reports."""
        return {"num_blocks": self.num_blocks, "block_size": self.block_size, "num_free_blocks": self.num_free,
                "usage": self.usage, "capacity_tokens": self.capacity_tokens()}

    def check_consistency(self) -> None:
        """Raise AssertionError if the free list and the owners disagree (tests, debugging)."""
        with self._lock:
            free = set(self._free)
            assert len(free) == len(self._free), "a block is on the free list twice"
            for b in range(self.num_blocks):
                assert (b in free) == (self._owner[b] is None), f"block {b}: free list and owner disagree"
