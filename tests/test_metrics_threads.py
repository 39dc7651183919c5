"""Concurrent recording loses nothing: 8 threads x 100k events, every count exact."""

from __future__ import annotations

import threading

from semipd.metrics import SemiPDMetricsCollector

THREADS = 8
EVENTS_PER_THREAD = 100_000
EVENTS_PER_REQUEST = 5  # arrival, prefill start, first token, one more token, completion
REQUESTS_PER_THREAD = EVENTS_PER_THREAD // EVENTS_PER_REQUEST


def test_eight_threads_lose_nothing() -> None:
    total = THREADS * REQUESTS_PER_THREAD
    m = SemiPDMetricsCollector(window_size_seconds=3600.0, max_history_size=total, max_itl_samples=total)
    start = threading.Barrier(THREADS + 1)
    stop_reader = threading.Event()
    reader_errors: list[BaseException] = []

    def writer(k: int) -> None:
        rids = [f"t{k}-{i}" for i in range(REQUESTS_PER_THREAD)]
        start.wait()
        for rid in rids:
            m.record_request_arrival(rid, 16)
            m.record_prefill_start(rid)
            m.record_first_token(rid)
            m.record_token(rid)
            m.record_request_completion(rid, 2)

    def reader() -> None:
        try:
            while not stop_reader.wait(0.02):
                agg = m.get_current_window_metrics()
                assert agg.num_in_flight == agg.num_waiting_prefill + agg.num_decoding
                assert agg.num_completed <= agg.num_ttft_samples
        except BaseException as exc:  # reported below
            reader_errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(THREADS)]
    watcher = threading.Thread(target=reader)
    for t in threads:
        t.start()
    watcher.start()
    start.wait()
    for t in threads:
        t.join()
    stop_reader.set()
    watcher.join()
    assert not reader_errors

    stats = m.get_stats()
    assert stats["num_arrivals"] == total
    assert stats["num_completed_total"] == total
    assert stats["num_in_flight"] == 0
    assert stats["num_evicted"] == 0 and stats["history_size"] == total
    assert stats["unknown_request_events"] == 0 and stats["out_of_order_events"] == 0
    agg = m.get_current_window_metrics()
    assert agg.num_completed == total
    assert agg.num_ttft_samples == total and agg.num_tpot_samples == total
    assert (agg.num_in_flight, agg.num_waiting_prefill, agg.num_decoding) == (0, 0, 0)
    assert not agg.window_truncated
