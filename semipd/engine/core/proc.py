"""The engine-core process: owns the GPU, the engine (unified loop, or the two Semi-PD workers and
the SLO controller) and talks to the API process over ZeroMQ (`messages`).

Three threads, so that socket I/O and (de)serialization overlap the engine's steps::

    input thread:   PULL socket -> decode -> inbox queue
    main thread:    inbox -> add / abort / client events / allocation -> engine.step()
                    -> StepOutputs (token-id deltas of the step) ; StatusSnapshot every interval
    output thread:  outbox queue -> encode -> PUSH socket

The core exits when it receives `Shutdown`, on SIGTERM, or when the API process that started it
is gone (no orphans: it checks its parent every `PARENT_CHECK_S`). SIGINT is ignored: Ctrl-C in
a terminal reaches the whole process group, and the API process decides when the core stops.
A failed step fails only its requests; any other error fails every live request, is logged and
counted, and the loop goes on.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from typing import Any

import zmq

from semipd.engine.core import messages as m
from semipd.engine.engine_config import EngineConfig
from semipd.engine.errors import StepError
from semipd.engine.tokenizer import tokenizer_dir

logger = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5


class EngineCore:
    """The core loop around an engine (`Engine` or `SemiPDEngine`, built with ``delivery=False``)."""

    def __init__(self, engine: Any, input_socket: zmq.Socket, output_socket: zmq.Socket,
                 status_interval_s: float = 0.2) -> None:
        self.engine = engine
        self.status_interval_s = status_interval_s
        self._inbox: queue.SimpleQueue[m.CoreInput] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[m.CoreOutput | None] = queue.SimpleQueue()
        self._input_socket = input_socket
        self._output_socket = output_socket
        self._stop = threading.Event()
        self._live: set[str] = set()
        self._rejected: list[tuple[str, str]] = []
        self._failed: list[tuple[str, str]] = []
        self._last_status = float("-inf")
        self.num_step_errors = 0
        self.last_error: str | None = None

    # -- threads ----------------------------------------------------------------------------
    def _read_inputs(self) -> None:
        decoder = m.input_decoder()
        while not self._stop.is_set():
            try:
                if not self._input_socket.poll(100):
                    continue
                msg = decoder.decode(self._input_socket.recv(copy=False).buffer)
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                logger.exception("engine core: input socket error")
                continue
            except Exception:  # a message we cannot decode: drop it, keep reading
                self.num_step_errors += 1
                logger.exception("engine core: undecodable input message")
                continue
            self._inbox.put(msg)
            self.engine.interrupt()  # a Semi-PD step waiting for outputs returns, so the input is applied now

    def _write_outputs(self) -> None:
        encoder = m.encoder()
        while True:
            msg = self._outbox.get()
            if msg is None:
                return
            try:
                self._output_socket.send(encoder.encode(msg), copy=False)
            except Exception:
                self.num_step_errors += 1
                logger.exception("engine core: cannot send %s", type(msg).__name__)

    def send(self, msg: m.CoreOutput) -> None:
        self._outbox.put(msg)

    def stop(self) -> None:
        self._stop.set()

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> None:
        reader = threading.Thread(target=self._read_inputs, name="semipd-core-input", daemon=True)
        writer = threading.Thread(target=self._write_outputs, name="semipd-core-output", daemon=True)
        reader.start()
        writer.start()
        try:
            while not self._stop.is_set():
                try:
                    self._iterate()
                except Exception as exc:  # the loop must survive anything
                    self._fail_all(exc)
        finally:
            self._outbox.put(None)
            writer.join(5.0)
            reader.join(1.0)

    def _iterate(self) -> None:
        engine = self.engine
        if not engine.has_unfinished():  # idle: wait for work, waking to publish the status
            try:
                self._handle(self._inbox.get(timeout=self.status_interval_s))
            except queue.Empty:
                pass
        while True:  # everything that arrived meanwhile, before the next step
            try:
                self._handle(self._inbox.get_nowait())
            except queue.Empty:
                break
        deltas: list[m.TokenDelta] = []
        if engine.has_unfinished() and not self._stop.is_set():
            deltas = self._step()
        if deltas or self._rejected or self._failed:
            self.send(m.StepOutputs(deltas, self._rejected, self._failed))
            self._rejected, self._failed = [], []
        now = time.monotonic()
        if now - self._last_status >= self.status_interval_s:
            self._last_status = now
            self.send(m.StatusSnapshot(now, self.status()))

    def _step(self) -> list[m.TokenDelta]:
        try:
            deltas = self.engine.step()
        except StepError as exc:
            self.num_step_errors += 1
            self.last_error = str(exc)
            logger.error("%s", exc, exc_info=exc.__cause__)
            for rid in exc.rids:
                self._live.discard(rid)
                self._failed.append((rid, str(exc)))
            return []
        live = self._live
        for d in deltas:
            if d.finish_reason is not None:
                live.discard(d.rid)
        return deltas

    def _handle(self, msg: m.CoreInput) -> None:
        engine = self.engine
        if isinstance(msg, m.AddRequest):
            try:
                engine.add_request(msg.rid, msg.prompt_token_ids, msg.params.to_sampling_params(), msg.arrival_time)
            except ValueError as exc:
                self._rejected.append((msg.rid, str(exc)))
                return
            self._live.add(msg.rid)
        elif isinstance(msg, m.AbortRequests):
            for rid in msg.rids:
                engine.abort(rid)
                self._live.discard(rid)
        elif isinstance(msg, m.ClientEvents):
            rec = engine.recorder
            rec.client_first_tokens(msg.first_tokens)
            rec.client_tokens(msg.tokens)
            rec.client_completions(msg.completions)
            rec.client_aborts(msg.aborts)
        elif isinstance(msg, m.SetAllocation):
            self.send(self._set_allocation(msg))
        elif isinstance(msg, m.Shutdown):
            self.stop()

    def _set_allocation(self, msg: m.SetAllocation) -> m.AllocationResult:
        if self.engine.config.mode != "semi-pd":
            return m.AllocationResult(msg.call_id, None, f"the engine runs in mode {self.engine.config.mode!r}, "
                                                          "which has no SM partitions to allocate")
        try:
            applied = self.engine.set_allocation(msg.prefill_percentage, msg.decode_percentage)
        except ValueError as exc:
            return m.AllocationResult(msg.call_id, None, str(exc))
        self._last_status = float("-inf")  # publish the new split at once
        return m.AllocationResult(msg.call_id, applied.as_dict(), None)

    def status(self) -> dict[str, Any]:
        """The engine's status, the loop's errors, and the latency window the SLO controller reads
        (``controller_window``: client-side TTFT/TPOT forwarded by the API process)."""
        try:
            status = self.engine.get_status()
        except Exception as exc:  # a status that cannot be read must not stop the loop
            logger.exception("engine status failed")
            status = {"status_error": f"{type(exc).__name__}: {exc}"}
        window = self.engine.metrics_collector.get_current_window_metrics()
        status.update(engine_core_pid=os.getpid(), num_step_errors=self.num_step_errors, last_error=self.last_error,
                      controller_window={"num_ttft_samples": window.num_ttft_samples,
                                         "num_completed": window.num_completed, "ttft_p50_ms": window.ttft_p50,
                                         "tpot_p50_ms": window.tpot_p50})
        return status

    def _fail_all(self, exc: Exception) -> None:
        """An error outside a step (the engine's state is unknown): end every live request."""
        self.num_step_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.exception("engine core loop error; failing %d live requests", len(self._live))
        for rid in list(self._live):
            try:
                self.engine.abort(rid)
            except Exception:
                logger.exception("engine core: could not abort %s", rid)
            self._failed.append((rid, self.last_error))
        self._live.clear()
        self.send(m.StepOutputs([], [], self._failed))
        self._failed = []
        time.sleep(0.01)  # a persistent fault must not spin the loop


def _watch_parent(parent_pid: int, cores: list[EngineCore], stopped: threading.Event) -> None:
    """Stop the core when the API process is gone (re-parented), and exit hard if that hangs or
    the core is still loading."""
    while not stopped.wait(PARENT_CHECK_S):
        if os.getppid() != parent_pid:
            logger.warning("engine core: the API process %d is gone; exiting", parent_pid)
            for core in cores:
                core.stop()
            if not cores or not stopped.wait(10.0):
                os._exit(1)
            return


def run_engine_core(config: EngineConfig, input_address: str, output_address: str, parent_pid: int,
                    status_interval_s: float = 0.2, log_level: str = "INFO") -> None:
    """Entry point of the engine-core process (a `multiprocessing` spawn target)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [core]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    context = zmq.Context()
    inputs = context.socket(zmq.PULL)
    inputs.connect(input_address)
    outputs = context.socket(zmq.PUSH)
    outputs.setsockopt(zmq.LINGER, 2000)
    outputs.connect(output_address)
    encoder = m.encoder()
    stopped = threading.Event()
    holder: list[EngineCore] = []
    threading.Thread(target=_watch_parent, args=(parent_pid, holder, stopped), name="semipd-core-parent",
                     daemon=True).start()
    engine = None
    try:
        from semipd.engine.factory import create_engine

        engine = create_engine(config, delivery=False)
        core = EngineCore(engine, inputs, outputs, status_interval_s)
        holder.append(core)
        signal.signal(signal.SIGTERM, lambda *_: core.stop())
        mc = engine.model_config
        ready = m.EngineReady(pid=os.getpid(), max_model_len=int(engine.max_model_len),
                              vocab_size=int(mc.vocab_size), bos_token_id=mc.bos_token_id,
                              eos_token_ids=sorted(engine.eos_token_ids),
                              tokenizer_dir=tokenizer_dir(config.model, config.tokenizer))
        outputs.send(encoder.encode(ready))
        core.run()
    except Exception as exc:
        logger.exception("engine core failed")
        outputs.send(encoder.encode(m.EngineFailed(f"{type(exc).__name__}: {exc}")))
        raise SystemExit(1) from None
    finally:
        stopped.set()
        if engine is not None:
            engine.stop()
        inputs.close(linger=0)
        outputs.close()
        context.term()
