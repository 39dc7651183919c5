"""`semipd profile`'s measurements: the real engine's `ModelRunner` on its SM partitions, into a profile.

The profile (`semipd.perf.profile`, the format the simulator and the ``profile`` predictor
read) holds, per SM count, the device time of one prefill iteration by batched tokens, of one
decode step by batch and KV tokens, the slowdown of each phase beside the other on a split,
and the host's share of a step. Everything runs on the engine's own path: the model loaded as
the engine loads it, the paged KV cache, the partitions `build_partition_manager` pre-creates
(green contexts on a Hopper GPU), decode steps replaying the CUDA graphs captured per partition
(and on a whole-device stream), prefill batches padded to token buckets and launched layer by
layer as the prefill worker launches them. Requests are synthetic, their KV blocks taken from
the engine's allocator.

SM counts. With green contexts, the partitions measured are the grid's prefill SM counts in
16-SM steps (``sms`` picks others): prefill is timed on each one's prefill side, decode on each
one's decode side (the remainder, so decode's SM counts are 132 minus those), and both on the
whole device. Without them (the CPU, a GPU without green contexts) there is one partition, the
whole device, for both phases.

Times. A step's device time runs from an event recorded once its host inputs are built to an
event after its last kernel; its host time is the rest of the step's wall time (building
inputs, launching, reading the sampled tokens back), reported per phase as the median
``host_overhead_ms``. On the CPU, device time is the wall time less the input building. Decode
is timed at two contexts per (SMs, batch), and the table's KV-token points come from the line
through them (a decode step reads every KV token once, so its time is linear in them): the
table can hold points no single batch fits in memory. Interference runs the decode step beside
back-to-back prefill iterations on the other side of a split (another thread, as in serving),
and compares medians with each phase alone.

Sizing for an H100 with Llama-3.1-8B within ~3 minutes: model load and graph capture (8 sets)
~1 minute; prefill 8 SM counts x 4 token counts x (1 + reps) iterations ~25 s; decode 8 x 5
batches x 2 contexts x (1 + reps) steps ~10 s; interference 4 splits x 3 phases x
``interference_seconds``.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from semipd.allocation import HOPPER_MIN_SMS, HOPPER_SPLIT_GRANULARITY, SMGrid
from semipd.engine.common import allocate_kv_cache, load_engine_model, piecewise_graphs, resolve_device
from semipd.engine.engine_config import EngineConfig
from semipd.engine.runtime.cuda_graphs import GraphRunner
from semipd.engine.runtime.model_runner import ModelRunner
from semipd.engine.runtime.warm_up import synthetic_request
from semipd.engine.semi_pd.config import SemiPDConfig
from semipd.engine.semi_pd.startup import (
    WHOLE_DEVICE,
    build_partition_manager,
    capture_partition_graphs,
    capture_prefill_pieces,
)
from semipd.engine.semi_pd.workers import LaunchThrottle
from semipd.partition.green import green_contexts_unavailable_reason
from semipd.sched import Batch, BlockAllocator, PrefillChunk, Request


@dataclass(frozen=True)
class ProfileGrid:
    """What `measure_profile` measures. Invalid values raise ValueError naming the field."""

    sms: tuple[int, ...] | None = None
    """Prefill SM counts of the partitions to measure (on the grid); None: every 16 SMs of the grid."""
    prefill_tokens: tuple[int, ...] = (128, 512, 2048, 8192)
    """Batched tokens of the prefill iterations (one fresh prompt each)."""
    decode_batch: tuple[int, ...] = (1, 16, 64, 128, 256)
    """Decode batch sizes."""
    decode_context: tuple[int, int] = (128, 2048)
    """The two contexts (tokens per sequence) each decode batch is timed at (the larger shrinks to fit the KV cache)."""
    kv_tokens: tuple[int, ...] = (0, 131_072, 524_288)
    """KV tokens over the batch at which the profile tabulates decode steps (from the line through the two contexts)."""
    interference_splits: int = 4
    """Splits to measure the phases side by side on (spread over the partitions measured)."""
    interference_seconds: float = 0.5
    """Seconds of decode steps per measurement (alone, beside prefill, alone again)."""
    reps: int = 3
    """Timed repetitions per point (after one untimed warm-up)."""

    def __post_init__(self) -> None:
        for name in ("prefill_tokens", "decode_batch", "kv_tokens"):
            values = getattr(self, name)
            low = 0 if name == "kv_tokens" else 1
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values) \
                    or list(values) != sorted(set(values)):
                raise ValueError(f"{name} must be increasing ints >= {low}, got {values!r}")
        if self.sms is not None and (not self.sms or any(not isinstance(s, int) or s < 1 for s in self.sms)):
            raise ValueError(f"sms must be None or ints >= 1, got {self.sms!r}")
        lo, hi = self.decode_context
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo < hi):
            raise ValueError(f"decode_context must be two ints 1 <= low < high, got {self.decode_context!r}")
        for name in ("interference_splits", "reps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.interference_seconds > 0:
            raise ValueError(f"interference_seconds must be > 0, got {self.interference_seconds!r}")


@dataclass(frozen=True)
class Timing:
    """One step: wall seconds, and the device's share of them."""

    wall_s: float
    device_s: float

    @property
    def host_s(self) -> float:
        return max(0.0, self.wall_s - self.device_s)


class Bench:
    """The engine's pieces a profile runs on: model, KV cache, partitions, decode graphs, runners."""

    def __init__(self, config: EngineConfig, sms: tuple[int, ...] | None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.model, self.max_model_len, _, _ = load_engine_model(config, self.device)
        cuda = self.device.type == "cuda"
        self.sm_limited = cuda and green_contexts_unavailable_reason(self.device.index or 0) is None
        semipd = self._partition_config(sms)
        self.partitions = build_partition_manager(self.device, semipd)
        self.partitions.start()
        try:  # the partitions hold device contexts and streams: never leave them behind
            self.grid = self.partitions.grid
            self.kv_cache = allocate_kv_cache(config, self.model, self.device, self.max_model_len)
            self.allocator = BlockAllocator(self.kv_cache.num_blocks, config.block_size)
            self.whole_device = torch.cuda.Stream(self.device) if cuda else None
            graphs = pieces = None
            if cuda and not config.enforce_eager:
                graphs = GraphRunner(self.model, self.kv_cache, config.max_num_seqs, self.max_model_len)
                capture_partition_graphs(graphs, self.partitions, len(self.partitions.partitions()), self.whole_device)
                pieces = piecewise_graphs(config, self.model, self.kv_cache)  # prefill as the prefill worker runs it
                if pieces is not None:
                    capture_prefill_pieces(pieces, self.partitions, self.whole_device if self.sm_limited else None)
            self.decode_runner = ModelRunner(self.model, self.kv_cache, graphs)
            self.prefill_runner = ModelRunner(self.model, self.kv_cache, pad_prefill=True, piecewise=pieces)
            self.throttle = LaunchThrottle(semipd.prefill_launch_lookahead_layers)
        except BaseException:
            self.partitions.stop()
            raise
        self.vocab = self.model.config.vocab_size
        self._prefill_keys = {p.prefill_stream: key for key, p in self.partitions.partitions().items()}
        """Prefill stream -> the key of the piecewise graphs captured on it."""
        if self.sm_limited:
            self._prefill_keys[self.whole_device] = WHOLE_DEVICE

    def _partition_config(self, sms: tuple[int, ...] | None) -> SemiPDConfig:
        if not self.sm_limited:
            return SemiPDConfig(controller="off")  # one partition: the whole device
        total = torch.cuda.get_device_properties(self.device).multi_processor_count
        choices = SMGrid(total, HOPPER_SPLIT_GRANULARITY, HOPPER_MIN_SMS).prefill_sm_choices()  # the factory's grid
        every_other = choices[::2]
        chosen = tuple(sorted(set(sms))) if sms is not None else tuple(sorted({*every_other, choices[-1]}))
        bad = [s for s in chosen if s not in choices]
        if bad:
            raise ValueError(f"sms {bad} are not splits of this GPU; choose from {choices}")
        return SemiPDConfig(controller="static", initial_prefill_sm_percent=100.0 * chosen[0] / total,
                            reachable_prefill_sms=chosen, max_graph_partitions=len(chosen))

    # -- sides ------------------------------------------------------------------------------------
    def prefill_sides(self) -> dict[int, Any]:
        """SM count -> stream prefill runs on (None: no streams)."""
        if not self.sm_limited:
            part = next(iter(self.partitions.partitions().values()))
            return {self.grid.total_sms: part.prefill_stream}
        sides = {p.prefill_sms: p.prefill_stream for p in self.partitions.partitions().values()}
        return {**sides, self.grid.total_sms: self.whole_device}

    def decode_sides(self) -> dict[int, tuple[Any, Any]]:
        """SM count -> (stream, graph key) decode runs on."""
        if not self.sm_limited:
            key, part = next(iter(self.partitions.partitions().items()))
            return {self.grid.total_sms: (part.decode_stream, key)}
        sides = {p.decode_sms: (p.decode_stream, key) for key, p in self.partitions.partitions().items()}
        return {**sides, self.grid.total_sms: (self.whole_device, WHOLE_DEVICE)}

    # -- requests ---------------------------------------------------------------------------------
    def prompt(self, tokens: int, rid: str = "profile-prefill") -> Request:
        return synthetic_request(self.allocator, rid, tokens, self.vocab)

    def decoding(self, batch: int, context: int) -> list[Request]:
        """`batch` requests about to decode position `context` - 1."""
        reqs = []
        for i in range(batch):
            req = synthetic_request(self.allocator, f"profile-decode-{i}", context - 1, self.vocab)
            req.append_token(1)
            reqs.append(req)
        return reqs

    def free(self, requests: list[Request]) -> None:
        for req in requests:
            self.allocator.free(req)

    def fits(self, tokens: int) -> bool:
        return tokens <= 0.9 * self.allocator.num_free * self.config.block_size

    # -- steps ------------------------------------------------------------------------------------
    def prefill(self, batch: Batch, stream: Any) -> Timing:
        runner, throttle = self.prefill_runner, self.throttle
        key = self._prefill_keys.get(stream, "default")
        return self._timed(runner, batch, stream, lambda host: runner.launch(
            batch, graph_key=key, layer_hook=lambda _: throttle.mark(stream), host=host), throttle.reset)

    def decode(self, batch: Batch, stream: Any, key: Any) -> Timing:
        runner = self.decode_runner
        return self._timed(runner, batch, stream, lambda host: runner.launch(batch, graph_key=key, host=host))

    def _timed(self, runner: ModelRunner, batch: Batch, stream: Any, launch: Callable[[Any], Any],
               after: Callable[[], None] | None = None) -> Timing:
        with torch.inference_mode(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
            start = time.perf_counter()
            host = runner.host_batch(batch)
            built = time.perf_counter()
            if stream is None:
                launch(host).wait()
                end = time.perf_counter()
                return Timing(end - start, end - built)
            begin, finish = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            pending = launch(host)
            finish.record(stream)
            pending.wait()
            if after is not None:
                after()
            finish.synchronize()
            return Timing(time.perf_counter() - start, begin.elapsed_time(finish) / 1e3)


def median_ms(timings: list[Timing], device: bool = True) -> float:
    """Median device (or wall) time of `timings`, milliseconds."""
    return 1e3 * statistics.median(t.device_s if device else t.wall_s for t in timings)


def repeat(step: Callable[[], Timing], reps: int) -> list[Timing]:
    """One untimed warm-up, then `reps` timings."""
    step()
    return [step() for _ in range(reps)]


def side_by_side(bench: Bench, prefill_sms: int, grid: ProfileGrid, tokens: int, batch: int,
                 context: int) -> dict[str, float]:
    """Decode (`batch` at `context`) on the decode side of the split giving prefill `prefill_sms`:
    alone, beside back-to-back `tokens`-token prefill iterations (another thread), alone again."""
    part = bench.partitions.partitions()[prefill_sms] if bench.sm_limited else next(
        iter(bench.partitions.partitions().values()))
    key = prefill_sms if bench.sm_limited else next(iter(bench.partitions.partitions()))
    prompt = bench.prompt(tokens)
    decodes = bench.decoding(batch, context)
    pbatch = Batch(prefills=[PrefillChunk(prompt, 0, tokens, True)])
    dbatch = Batch(decodes=decodes)
    stop = threading.Event()
    beside: list[Timing] = []
    failure: list[BaseException] = []

    def prefill_loop() -> None:
        try:
            if bench.device.type == "cuda":
                torch.cuda.set_device(bench.device)
            while not stop.is_set():
                beside.append(bench.prefill(pbatch, part.prefill_stream))
        except BaseException as exc:  # surfaced in the caller
            failure.append(exc)

    def decode_for(seconds: float) -> list[Timing]:
        out: list[Timing] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or not out:
            out.append(bench.decode(dbatch, part.decode_stream, key))
        return out

    try:
        prefill_alone = repeat(lambda: bench.prefill(pbatch, part.prefill_stream), grid.reps)
        decode_for(0.05)
        alone = decode_for(grid.interference_seconds)
        thread = threading.Thread(target=prefill_loop, name="semipd-profile-prefill", daemon=True)
        thread.start()
        while not beside and not failure:
            time.sleep(0.001)
        together = decode_for(grid.interference_seconds)
        stop.set()
        thread.join()
        if failure:
            raise RuntimeError("the prefill thread failed") from failure[0]
        alone += decode_for(grid.interference_seconds)
    finally:
        stop.set()
        bench.free([prompt, *decodes])
    total = bench.grid.total_sms  # without partitions both phases run on the whole device
    return {"prefill_sms": part.prefill_sms if bench.sm_limited else total,
            "decode_sms": part.decode_sms if bench.sm_limited else total,
            "prefill_slowdown": max(1.0, median_ms(beside, False) / median_ms(prefill_alone, False)),
            "decode_slowdown": max(1.0, median_ms(together, False) / median_ms(alone, False))}
