"""`SteadyStateModel`: what TTFT, TPOT and throughput a split gives under a window's load.

The ``profile`` predictor (`semipd.slo.predictors.ProfilePredictor`) asks it about every
candidate split. It combines a `PerfModel` (on the simulated GPU the simulator's own; on a
real GPU the profile `semipd profile` measured, or the built-in model of that GPU and model)
with a steady-state queueing model of the window's load:

- load: arrival rate ``lambda``; for prefill the mean prompt length of the requests that
  arrived in the window, for decode the mean prompt and output lengths of those completed in
  it (a pair that belongs together; the last known lengths when none arrived or completed);
- decode: the batch follows Little's law, ``B = lambda * (out - 1) * t``, and the step time
  ``t = decode_time(B, B * context, decode SMs)`` grows with it, slowed by prefill's
  interference for the share of time prefill is busy (and, when decode borrows prefill's
  idle SMs as the engine does, on the whole GPU for the share it is idle); the fixed point is TPOT. No fixed
  point below ``max_decode_batch`` means decode cannot keep up: TPOT is reported as
  `OVERLOAD` times the step time;
- prefill: capacity ``c`` tokens/s from full ``max_prefill_tokens`` iterations on the
  prefill SMs (slowed while decode runs), utilisation ``rho = lambda * in / c``; TTFT at
  the percentile is one iteration of service plus the M/D/1 mean wait scaled to an
  exponential tail, ``-ln(1 - p) * rho / (2 (1 - rho)) * iteration``; ``rho >= 1`` is
  overload;
- throughput: the arrival rate, capped by the smaller of the two phases' capacities, so
  every split that carries the whole load ties and the algorithm prefers headroom.

Limitation: output lengths are known only once requests complete, so for a while after the
mix changes decode is forecast with the old mix's lengths at the new arrival rate: TPOT
forecasts run low when short answers give way to long ones (the observed, streaming TPOT
still raises the violation) and high when long answers give way to short ones. Pairing the
new prompts with the old answers instead (long prompts arriving after long answers) would
forecast a decode batch that never forms. Prompt lengths are known at arrival, and the
prefill forecast follows the load at once.
"""

from __future__ import annotations

import math

from semipd.allocation import SMAllocation
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.perf.model import PerfModel

OVERLOAD = 20.0
"""Latency multiplier reported for a phase that cannot keep up with the load."""
SERVICE_TAIL = 1.7
"""High-percentile prompts take longer than the mean one: their iteration time, relative to the mean's."""
TPOT_TAIL = 1.1
"""High-percentile TPOT relative to the mean step time (batch and interference vary over a request's life).
Both tails were calibrated on simulated steady loads (uniform prompt and output lengths)."""


class SteadyStateModel:
    """A `semipd.slo.PerformanceProfile` backed by a `PerfModel` (see the module docstring).

    `max_prefill_tokens` and `max_decode_batch` are the schedulers' limits (prefill token budget
    per iteration, largest decode batch); `decode_borrows_idle_prefill` whether decode steps run
    on the whole GPU while prefill has nothing to do."""

    def __init__(self, perf: PerfModel, max_prefill_tokens: int = 8192, max_decode_batch: int = 256,
                 decode_borrows_idle_prefill: bool = True, default_input_len: float = 1024.0,
                 default_output_len: float = 128.0) -> None:
        for name, value in (("max_prefill_tokens", max_prefill_tokens), ("max_decode_batch", max_decode_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.perf = perf
        self.max_prefill_tokens = max_prefill_tokens
        self.max_decode_batch = max_decode_batch
        self.decode_borrows_idle_prefill = bool(decode_borrows_idle_prefill)
        self._input_len = float(default_input_len)
        self._decode_input_len = float(default_input_len)
        self._output_len = float(default_output_len)

    def predict(self, allocation: SMAllocation, metrics: AggregatedMetrics,
                ttft_percentile: float = 95.0) -> tuple[float, float, float]:
        """(TTFT ms at `ttft_percentile`, TPOT ms at a high percentile, requests/s) of `allocation`
        under the window's load."""
        if not 0 < ttft_percentile <= 100:
            raise ValueError(f"ttft_percentile must be in (0, 100], got {ttft_percentile!r}")
        self._learn_lengths(metrics)
        total = self.perf.total_sms
        x = min(total - 1, max(1, round(allocation.prefill_percentage * total / 100.0)))
        y = min(total - x, max(1, round(allocation.decode_percentage * total / 100.0)))
        lam = max(metrics.request_arrival_rate, 1e-6)
        fp, fd = self.perf.interference(x, y)
        rho, iteration, prefill_cap = self._prefill(lam, x, fp)
        tpot_s, decode_busy, decode_cap = self._decode(lam, y, fd, min(rho, 1.0))
        if decode_busy < 1.0:  # decode idle part of the time: prefill is slowed only while it runs
            rho, iteration, prefill_cap = self._prefill(lam, x, 1.0 + (fp - 1.0) * decode_busy)
        ttft_s = self._ttft(rho, iteration, ttft_percentile)
        throughput = min(lam, prefill_cap, decode_cap)
        return 1000.0 * ttft_s, 1000.0 * tpot_s, throughput

    def _learn_lengths(self, metrics: AggregatedMetrics) -> None:
        if metrics.request_arrival_rate > 0 and metrics.arrival_input_token_rate > 0:
            self._input_len = max(1.0, metrics.arrival_input_token_rate / metrics.request_arrival_rate)
        done = metrics.request_throughput
        if done > 0:
            self._output_len = max(1.0, metrics.output_token_throughput / done)
            if metrics.input_token_throughput > 0:
                self._decode_input_len = max(1.0, metrics.input_token_throughput / done)

    def _prefill(self, lam: float, sms: int, slowdown: float) -> tuple[float, float, float]:
        """(utilisation, seconds of one iteration serving a request, capacity in requests/s)."""
        n_in = max(1, round(self._input_len))
        budget = self.max_prefill_tokens
        per_batch = max(1, budget // n_in)
        full = self.perf.prefill_time([(min(n_in, budget), min(n_in, budget))] * per_batch, sms) * slowdown
        tokens_per_s = per_batch * min(n_in, budget) / full
        rho = lam * n_in / tokens_per_s
        # The iteration a request rides in holds its own prompt plus, on average, what arrived
        # during half an iteration.
        alone = self.perf.prefill_time([(min(n_in, budget), min(n_in, budget))], sms) * slowdown
        k = max(1, min(per_batch, round(1 + 0.5 * lam * alone)))
        iteration = self.perf.prefill_time([(min(n_in, budget), min(n_in, budget))] * k, sms) * slowdown
        if n_in > budget:
            iteration *= n_in / budget  # chunked over several iterations
        return rho, iteration, tokens_per_s / n_in

    @staticmethod
    def _ttft(rho: float, iteration: float, percentile: float) -> float:
        if rho >= 1.0:
            return OVERLOAD * iteration
        tail = -math.log(1.0 - percentile / 100.0) if percentile < 100 else 5.0
        return SERVICE_TAIL * iteration + tail * rho / (2.0 * (1.0 - rho)) * iteration

    def _decode(self, lam: float, sms: int, slowdown: float, prefill_busy: float) -> tuple[float, float, float]:
        """(step time = TPOT in s, share of time decode is busy, capacity in requests/s), decode on
        `sms` SMs slowed by `slowdown` while prefill runs (`prefill_busy` of the time)."""
        out = self._output_len
        ctx = self._decode_input_len + out / 2.0
        steps = max(out - 1.0, 1.0)
        cap_batch = self.max_decode_batch
        perf, total = self.perf, self.perf.total_sms

        def step(batch: float) -> float:
            b = max(1, round(batch))
            kv = round(b * ctx)
            beside = perf.decode_time(b, kv, sms) * slowdown
            alone = perf.decode_time(b, kv, total) if self.decode_borrows_idle_prefill else \
                perf.decode_time(b, kv, sms)
            return prefill_busy * beside + (1.0 - prefill_busy) * alone

        t = step(1)
        for _ in range(60):
            batch = lam * steps * t
            if batch > cap_batch:
                break
            t_next = step(batch)
            if abs(t_next - t) <= 1e-4 * t:
                t = t_next
                break
            t = t_next
        t_full = step(cap_batch)
        capacity = cap_batch / (steps * t_full)
        batch = lam * steps * t
        if batch > cap_batch or lam >= capacity:
            return OVERLOAD * t_full, 1.0, capacity
        return TPOT_TAIL * t, min(1.0, batch), capacity
