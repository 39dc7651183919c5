"""`EngineCoreClient`: the API process's side of the engine-core process (see `proc`).

It starts the core (a ``spawn``-ed process: the API process never imports torch nor touches
CUDA), sends it requests and aborts, and turns its per-step token-id deltas into streamed
`RequestOutput`s (`OutputProcessor`: detokenization and stop strings run here, on the event
loop). Lifecycle times are taken here, when tokens are handed to clients: they feed this
process's collector (Prometheus) and go back to the core (`ClientEvents`), whose SLO
controller thus acts on TTFT and TPOT as clients see them.

Failure: if the core process exits unexpectedly, every open request ends with
`RequestFailedError`, `is_running` turns False (``/health`` 503), new requests get
`EngineUnavailableError` (503), and the ``on_core_death`` callbacks run (the server exits
non-zero, for its supervisor to restart it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import zmq
import zmq.asyncio

from semipd.allocation import SMAllocation
from semipd.engine.core import messages as m
from semipd.engine.core.interface import (
    EngineClient,
    EngineUnavailableError,
    NoPartitionsError,
    QueueFullError,
    stream_outputs,
)
from semipd.engine.core.proc import run_engine_core
from semipd.engine.core.streams import RequestStreams
from semipd.engine.engine_config import EngineConfig
from semipd.engine.output_processor import OutputProcessor
from semipd.engine.sampling_params import RequestOutput, SamplingParams
from semipd.engine.tokenizer import make_tokenizer
from semipd.metrics import SemiPDMetricsCollector

logger = logging.getLogger(__name__)


class EngineCoreClient(EngineClient):
    """Runs `config`'s engine in an engine-core process and serves it to asyncio callers."""

    def __init__(self, config: EngineConfig, max_waiting: int = 1024, status_interval_s: float = 0.2,
                 start_timeout_s: float = 1800.0, stop_timeout_s: float = 10.0, log_level: str = "INFO") -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        if not status_interval_s > 0:
            raise ValueError(f"status_interval_s must be > 0, got {status_interval_s}")
        self.config = config
        self.max_waiting = max_waiting
        self.status_interval_s = status_interval_s
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_level = log_level
        self.metrics_collector = SemiPDMetricsCollector(window_size_seconds=config.metrics_window_seconds)
        self.mode = config.mode
        self.has_partitions = config.mode == "semi-pd"
        self.tokenizer = None
        self.max_model_len = 0
        self.vocab_size = 0
        self.core_pid: int | None = None
        self.exit_code: int | None = None
        """The core's exit code once it has exited (None while it runs)."""
        self.died = False
        """The core exited without being asked to."""
        self._process: Any = None
        self._tmpdir: str | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._input: zmq.Socket | None = None
        self._output: zmq.asyncio.Socket | None = None
        self._encoder = m.encoder()
        self._decoder = m.output_decoder()
        self._streams: RequestStreams | None = None
        self._status: dict[str, Any] = {}
        self._status_time = float("-inf")
        self._calls: dict[int, asyncio.Future] = {}
        self._next_call = 0
        self._reader: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._stopping = False
        self._death_callbacks: list[Callable[[], None]] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def on_core_death(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) if the core process exits without being asked to."""
        self._death_callbacks.append(callback)

    async def start(self) -> None:
        """Start the core process and wait until its model is loaded. RuntimeError when it fails."""
        self._loop = asyncio.get_running_loop()
        self._tmpdir = tempfile.mkdtemp(prefix="semipd-core-")
        to_core, from_core = f"ipc://{self._tmpdir}/input", f"ipc://{self._tmpdir}/output"
        self._ctx = zmq.asyncio.Context()
        self._input = zmq.Context.instance().socket(zmq.PUSH)
        self._input.setsockopt(zmq.LINGER, 0)
        self._input.setsockopt(zmq.SNDHWM, 0)  # no message limit: a full queue would drop requests
        self._input.bind(to_core)
        self._output = self._ctx.socket(zmq.PULL)
        self._output.setsockopt(zmq.LINGER, 0)
        self._output.bind(from_core)
        spawn = multiprocessing.get_context("spawn")
        self._process = spawn.Process(target=run_engine_core, name="semipd-engine-core", args=(
            self.config, to_core, from_core, os.getpid(), self.status_interval_s, self.log_level.upper()))
        self._process.start()
        try:
            ready = await self._wait_ready()
        except BaseException:
            await self._shutdown_process()
            self._close()
            raise
        self.core_pid = ready.pid
        self.max_model_len = ready.max_model_len
        self.vocab_size = ready.vocab_size
        self.tokenizer = make_tokenizer(ready.tokenizer_dir, ready.eos_token_ids, ready.bos_token_id,
                                        ready.vocab_size)
        self._streams = RequestStreams(OutputProcessor(self.tokenizer), self.metrics_collector)
        self._running = True
        self._loop.add_reader(self._process.sentinel, self._on_core_exit)
        self._reader = asyncio.ensure_future(self._read_outputs())

    async def _wait_ready(self) -> m.EngineReady:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if not self._process.is_alive():
                raise RuntimeError(f"the engine core exited during start-up (exit code {self._process.exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine core did not start within {self.start_timeout_s:.0f} s")
            if await self._output.poll(200):
                msg = self._decoder.decode(await self._output.recv())
                if isinstance(msg, m.EngineFailed):
                    raise RuntimeError(f"the engine core failed to start: {msg.message}")
                if isinstance(msg, m.EngineReady):
                    return msg

    async def stop(self) -> None:
        """Ask the core to stop, wait for it (then terminate, then kill), fail open requests."""
        self._stopping = True
        self._running = False
        if self._loop is not None and self._process is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._process.sentinel)
        self._send(m.Shutdown())
        await self._shutdown_process()
        self._fail_all("the engine stopped")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._close()

    async def _shutdown_process(self) -> None:
        proc = self._process
        if proc is None:
            return
        for action, wait_s in ((None, self.stop_timeout_s), (proc.terminate, 5.0), (proc.kill, 5.0)):
            if action is not None and proc.is_alive():
                action()
            await asyncio.to_thread(proc.join, wait_s)
            if not proc.is_alive():
                break
        self.exit_code = proc.exitcode

    def _close(self) -> None:
        for sock in (self._input, self._output):
            if sock is not None:
                sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._input = self._output = self._ctx = None

    def _on_core_exit(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._process.sentinel)
        if self._stopping:
            return
        self._process.join(1.0)  # it has exited (its sentinel fired): this only reaps it
        self.exit_code = self._process.exitcode
        self.died = True
        self._running = False
        logger.error("the engine core process exited unexpectedly (exit code %s); failing %d open requests",
                     self.exit_code, len(self._streams or ()))
        self._fail_all(f"the engine core process exited (exit code {self.exit_code})")
        for callback in self._death_callbacks:
            try:
                callback()
            except Exception:
                logger.exception("core-death callback failed")

    @property
    def is_running(self) -> bool:
        return self._running

    # -- requests -------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return self._streams.num_waiting if self._streams is not None else 0

    async def generate(self, rid: str, prompt_token_ids: list[int], params: SamplingParams,
                       arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        if not self._running or self._streams is None:
            raise EngineUnavailableError("the engine is not running" if not self.died else
                                         f"the engine core process exited (exit code {self.exit_code})")
        if rid in self._streams:
            raise ValueError(f"request id {rid!r} is already running")
        if self.num_waiting >= self.max_waiting:
            raise QueueFullError(f"{self.num_waiting} requests are waiting (max_waiting={self.max_waiting})",
                                 retry_after_s=self.retry_after_s())
        t = time.monotonic() if arrival_time is None else arrival_time
        if not self._send(m.AddRequest(rid, list(prompt_token_ids), m.Params.of(params), t)):
            raise EngineUnavailableError("the engine core does not take requests (its input queue is closed or full)")
        queue = self._streams.open(rid, prompt_token_ids, params, t)
        async for out in stream_outputs(queue, lambda: self.abort(rid)):
            yield out

    def abort(self, rid: str) -> None:
        events = self._streams.close(rid, time.monotonic()) if self._streams is not None else None
        if events is not None:
            self._send(m.AbortRequests([rid]))
            self._send(events)

    # -- outputs --------------------------------------------------------------------------------
    async def _read_outputs(self) -> None:
        assert self._output is not None
        while True:
            try:
                frame = await self._output.recv()
                msg = self._decoder.decode(frame)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError:
                if not self._running:
                    return
                logger.exception("engine core output socket error")
                await asyncio.sleep(0.01)
                continue
            except Exception:  # a message we cannot read: log it and go on
                logger.exception("undecodable message from the engine core")
                continue
            try:
                if isinstance(msg, m.StepOutputs):
                    self._on_outputs(msg)
                elif isinstance(msg, m.StatusSnapshot):
                    self._on_status(msg)
                elif isinstance(msg, m.AllocationResult):
                    future = self._calls.pop(msg.call_id, None)
                    if future is not None and not future.done():
                        future.set_result(msg)
            except Exception:
                logger.exception("handling %s from the engine core failed", type(msg).__name__)

    def _on_outputs(self, msg: m.StepOutputs) -> None:
        assert self._streams is not None
        applied = self._streams.apply(msg, time.monotonic())
        if applied.engine_aborts:
            self._send(m.AbortRequests(applied.engine_aborts))
        if applied.events is not None:
            self._send(applied.events)

    def _fail_all(self, reason: str) -> None:
        if self._streams is not None:
            self._streams.fail_all(reason, time.monotonic())
        for future in self._calls.values():
            if not future.done():
                future.set_exception(EngineUnavailableError(reason))
        self._calls.clear()

    def _on_status(self, msg: m.StatusSnapshot) -> None:
        status = msg.status
        self._status, self._status_time = status, msg.time
        self.record_status_metrics(status)

    # -- status and allocation --------------------------------------------------------------------
    def get_status(self) -> dict[str, Any]:
        status = dict(self._status)
        status.update(engine_core_pid=self.core_pid, engine_core_alive=self._running,
                      engine_core_exit_code=self.exit_code, num_in_flight=len(self._streams or ()),
                      num_waiting_api=self.num_waiting, max_waiting=self.max_waiting,
                      status_age_s=round(max(0.0, time.monotonic() - self._status_time), 3)
                      if self._status else None)
        return status

    async def set_sm_allocation(self, allocation: SMAllocation) -> SMAllocation:
        if not self.has_partitions:
            raise NoPartitionsError(f"the engine runs in mode {self.mode!r}, which has no SM partitions to allocate")
        if not self._running:
            raise EngineUnavailableError("the engine is not running")
        assert self._loop is not None
        call_id = self._next_call
        self._next_call += 1
        future: asyncio.Future = self._loop.create_future()
        self._calls[call_id] = future
        self._send(m.SetAllocation(call_id, allocation.prefill_percentage, allocation.decode_percentage))
        try:
            result: m.AllocationResult = await asyncio.wait_for(future, timeout=30.0)
        finally:
            self._calls.pop(call_id, None)
        if result.error is not None:
            raise ValueError(result.error)
        assert result.applied is not None
        return SMAllocation(result.applied["prefill_percentage"], result.applied["decode_percentage"])

    def _send(self, msg: m.CoreInput) -> bool:
        """Queue `msg` for the core without blocking the event loop; False (logged) when it cannot be."""
        if self._input is None:
            return False
        try:
            self._input.send(self._encoder.encode(msg), flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            logger.error("cannot send %s to the engine core: %s", type(msg).__name__, exc)
            return False
        return True
