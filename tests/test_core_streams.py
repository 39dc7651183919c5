"""`RequestStreams` (the API side of the engine core) on hand-made step outputs: outputs reach their
queues, lifecycle times are recorded once each and forwarded, stop strings ask for an abort in
the core, refused and failed requests get their errors, and the waiting count stays right."""

from __future__ import annotations

import asyncio

import pytest

from semipd.engine.core import messages as m
from semipd.engine.core.interface import RequestFailedError
from semipd.engine.core.streams import RequestStreams
from semipd.engine.output_processor import OutputProcessor
from semipd.engine.sampling_params import SamplingParams
from semipd.engine.tokenizer import ByteTokenizer
from semipd.metrics import SemiPDMetricsCollector


def make() -> tuple[RequestStreams, SemiPDMetricsCollector]:
    collector = SemiPDMetricsCollector()
    return RequestStreams(OutputProcessor(ByteTokenizer(512, 256, [257])), collector), collector


def drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_outputs_events_and_completion() -> None:
    async def main() -> None:
        streams, collector = make()
        q = streams.open("a", [1, 2], SamplingParams(max_tokens=2), 10.0)
        assert streams.num_waiting == 1 and "a" in streams
        with pytest.raises(ValueError, match="already running"):
            streams.open("a", [1], SamplingParams(), 10.0)
        first = streams.apply(m.StepOutputs([m.TokenDelta("a", [104], None, 2, 1)], [], []), 10.5)
        assert first.events.first_tokens == [("a", 10.5)] and streams.num_waiting == 0
        last = streams.apply(m.StepOutputs([m.TokenDelta("a", [105], "length", 2, 2)], [], []), 10.6)
        assert last.events.tokens == [("a", 10.6)] and last.events.completions == [("a", 2, True, 10.6)]
        outs = drain(q)
        assert [o.text for o in outs] == ["h", "hi"] and outs[-1].finish_reason == "length"
        assert "a" not in streams and len(streams) == 0
        rec = collector.get_request("a")
        assert rec.first_token_time == 10.5 and rec.completion_time == 10.6

    asyncio.run(main())


def test_stop_string_asks_the_core_to_abort_and_errors_reach_their_streams() -> None:
    async def main() -> None:
        streams, _ = make()
        qs = streams.open("s", [1], SamplingParams(max_tokens=50, stop=["yz"]), 0.0)
        qr = streams.open("r", [1], SamplingParams(), 0.0)
        qf = streams.open("f", [1], SamplingParams(), 0.0)
        applied = streams.apply(m.StepOutputs([m.TokenDelta("s", list(b"xyz"), None, 1, 3)],
                                              [("r", "bad token")], [("f", "step failed")]), 1.0)
        assert applied.engine_aborts == ["s"] and applied.events.completions[0][:3] == ("s", 3, True)
        assert ("f", 0, False, 1.0) in applied.events.completions
        assert drain(qs)[-1].text == "x"
        assert isinstance(drain(qr)[0], ValueError) and isinstance(drain(qf)[0], RequestFailedError)
        assert len(streams) == 0 and streams.num_waiting == 0

    asyncio.run(main())


def test_close_and_fail_all() -> None:
    async def main() -> None:
        streams, collector = make()
        streams.open("c", [1], SamplingParams(), 0.0)
        q = streams.open("d", [1], SamplingParams(), 0.0)
        assert streams.close("c", 2.0).aborts == [("c", 2.0)] and streams.close("c", 2.0) is None
        streams.fail_all("core gone", 3.0)
        assert isinstance(drain(q)[0], RequestFailedError) and streams.num_waiting == 0 and len(streams) == 0
        assert collector.get_stats()["num_aborted_total"] == 1 and collector.get_stats()["num_failed_total"] == 1

    asyncio.run(main())
