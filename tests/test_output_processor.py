"""Stop logic and streaming deltas on the output side (`OutputProcessor`): a stop string is never
half-streamed, text stops before it, tokens after it are dropped and the engine is told to
abort; engine stops (EOS, stop ids, length) end the request; deltas add up to the totals."""

from __future__ import annotations

from semipd.engine.core.messages import TokenDelta
from semipd.engine.output_processor import OutputProcessor
from semipd.engine.runtime.sequence import Sequence
from semipd.engine.sampling_params import SamplingParams
from semipd.engine.tokenizer import ByteTokenizer
from semipd.sched.request import Request, RequestState

TOK = ByteTokenizer(512, 256, [257])


def _run(tokens: list[int], params: SamplingParams, engine_stop: dict[int, str] | None = None,
         per_step: int = 1) -> tuple[list, list[bool]]:
    """Feed `tokens` as engine deltas of `per_step` tokens; the engine finishes on a token in
    `engine_stop` (its reason). Returns the outputs and each step's abort_in_engine."""
    proc = OutputProcessor(TOK)
    proc.add("r", TOK.encode("p"), params)
    outs, aborts = [], []
    for i in range(0, len(tokens), per_step):
        step = tokens[i:i + per_step]
        reason = next((engine_stop[t] for t in step if engine_stop and t in engine_stop), None)
        n = i + len(step)
        result = proc.process(TokenDelta("r", step, reason, 2, n))
        if result is None:
            break
        outs.append(result.output)
        aborts.append(result.abort_in_engine)
        if result.output.finished:
            break
    return outs, aborts


def test_stop_string_is_held_back_and_cut() -> None:
    outs, aborts = _run(list(b"hello, stop here"), SamplingParams(stop=["stop", "xyz"]))
    assert outs[-1].finished and outs[-1].finish_reason == "stop" and aborts[-1]
    assert outs[-1].text == "hello, " == "".join(o.new_text for o in outs)
    assert all("s" not in o.new_text for o in outs)
    assert outs[-1].token_ids == list(b"hello, stop")  # the ids include the stop string's tokens
    assert outs[-1].num_output_tokens == len(b"hello, stop")
    assert len(outs[3].text) == len("hell") - 3  # three characters held back while running


def test_tokens_after_a_stop_string_in_the_same_delta_are_dropped() -> None:
    outs, aborts = _run(list(b"ab stop cd"), SamplingParams(stop=["stop"]), per_step=10)
    assert len(outs) == 1 and outs[0].text == "ab " and outs[0].token_ids == list(b"ab stop") and aborts == [True]


def test_a_stop_string_on_the_engine_s_last_token_needs_no_abort() -> None:
    outs, aborts = _run(list(b"abstop"), SamplingParams(stop=["stop"]), engine_stop={ord("p"): "length"})
    assert outs[-1].finish_reason == "stop" and not aborts[-1]


def test_no_stop_strings_streams_everything_at_once() -> None:
    outs, _ = _run(list(b"abc"), SamplingParams())
    assert [o.new_text for o in outs] == ["a", "b", "c"]


def test_held_back_text_is_flushed_at_the_end() -> None:
    outs, aborts = _run([*b"abcd", 257], SamplingParams(stop=["zzzz"]), engine_stop={257: "stop"})
    assert outs[-1].finish_reason == "stop" and outs[-1].text == "abcd" and not any(aborts)
    assert "".join(o.new_text for o in outs) == "abcd"
    assert outs[-1].token_ids[-1] == 257


def test_stop_string_across_multibyte_tokens() -> None:
    outs, _ = _run(list("ab€cd".encode()), SamplingParams(stop=["€c"]))
    assert outs[-1].text == "ab" and outs[-1].finish_reason == "stop"


def test_abort_and_unknown_requests() -> None:
    proc = OutputProcessor(TOK)
    proc.add("r", [1, 2], SamplingParams())
    proc.process(TokenDelta("r", [97], None, 2, 1))
    final = proc.abort("r")
    assert final is not None and final.finish_reason == "abort" and final.token_ids == [97]
    assert proc.abort("r") is None and proc.process(TokenDelta("r", [98], None, 2, 2)) is None and len(proc) == 0


def test_engine_sequence_stops_on_stop_token_ids_and_deltas_add_up() -> None:
    seq = Sequence(params=SamplingParams(), seed=0, stop_ids=frozenset({300}))
    req = Request("r", 2, 100, 0.0, prompt_token_ids=[1, 2], payload=seq)
    deltas = []
    for t in [*b"ab", 300, *b"cd"]:
        req.append_token(t)
        reason = seq.check_stop(t)
        if reason is not None:
            req.finish_reason = reason
            req.state = RequestState.FINISHED
        deltas.append(seq.take_delta(req))
        if reason is not None:
            break
    assert req.output_token_ids == [97, 98, 300] == sum((d.new_token_ids for d in deltas), [])
    assert [d.finish_reason for d in deltas] == [None, None, "stop"] and deltas[-1].num_output_tokens == 3
