"""Scheduling core shared by the simulator and the real engine (no torch, no clocks).

`BlockAllocator` owns the paged KV cache's blocks; `PrefillScheduler` and
`DecodeScheduler` drive Semi-PD's two workers over one allocator; `UnifiedScheduler`
is the vLLM-style baseline. See `semipd.sched.base` for the interface and the
block-ownership rules across the prefill -> decode hand-off.
"""

from semipd.sched.base import Scheduler, StopChecker
from semipd.sched.batch import Batch, PrefillChunk
from semipd.sched.block_allocator import BlockAllocator
from semipd.sched.config import DecodeSchedulerConfig, PrefillSchedulerConfig, UnifiedSchedulerConfig
from semipd.sched.decode import DecodeScheduler
from semipd.sched.prefill import PrefillScheduler
from semipd.sched.request import Request, RequestState
from semipd.sched.unified import UnifiedScheduler

__all__ = [
    "Batch",
    "BlockAllocator",
    "DecodeScheduler",
    "DecodeSchedulerConfig",
    "PrefillChunk",
    "PrefillScheduler",
    "PrefillSchedulerConfig",
    "Request",
    "RequestState",
    "Scheduler",
    "StopChecker",
    "UnifiedScheduler",
    "UnifiedSchedulerConfig",
]
