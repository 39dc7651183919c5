"""Per-request stop logic and streaming deltas: a stop string is never half-streamed, text stops
before it, EOS and stop ids end the request, and deltas add up to the totals."""

from __future__ import annotations

from semipd.engine.sampling_params import SamplingParams
from semipd.engine.sequence import Sequence
from semipd.engine.tokenizer import ByteTokenizer
from semipd.sched.request import Request, RequestState

TOK = ByteTokenizer(512, 256, [257])


def _run(text_tokens: list[int], params: SamplingParams, stop_ids=frozenset({257})) -> tuple[list, Request]:
    prompt = TOK.encode("p")
    seq = Sequence(params=params, seed=0, stop_ids=stop_ids, detokenizer=TOK.detokenizer(prompt))
    req = Request("r", len(prompt), 100, 0.0, prompt_token_ids=prompt, payload=seq)
    outs = []
    for t in text_tokens:
        req.append_token(t)
        reason = seq.check_stop(t)
        if reason is not None:
            req.finish_reason = reason
            req.state = RequestState.FINISHED
        outs.append(seq.take_output(req))
        if reason is not None:
            break
    return outs, req


def test_stop_string_is_held_back_and_cut() -> None:
    outs, req = _run(list(b"hello, stop here"), SamplingParams(stop=["stop", "xyz"]))
    assert outs[-1].finished and outs[-1].finish_reason == "stop"
    assert outs[-1].text == "hello, " == "".join(o.new_text for o in outs)
    assert all("s" not in o.new_text for o in outs)
    assert outs[-1].token_ids == list(b"hello, stop")  # the ids include the stop string's tokens
    assert len(outs[3].text) == len("hell") - 3  # three characters held back while running


def test_no_stop_strings_streams_everything_at_once() -> None:
    outs, _ = _run(list(b"abc"), SamplingParams())
    assert [o.new_text for o in outs] == ["a", "b", "c"]


def test_held_back_text_is_flushed_at_the_end() -> None:
    outs, _ = _run([*b"abcd", 257], SamplingParams(stop=["zzzz"]))
    assert outs[-1].finish_reason == "stop" and outs[-1].text == "abcd"
    assert "".join(o.new_text for o in outs) == "abcd"
    assert outs[-1].token_ids[-1] == 257


def test_stop_string_across_multibyte_tokens() -> None:
    outs, _ = _run(list("ab€cd".encode()), SamplingParams(stop=["€c"]))
    assert outs[-1].text == "ab" and outs[-1].finish_reason == "stop"


def test_stop_token_ids() -> None:
    outs, req = _run([*b"ab", 300, *b"cd"], SamplingParams(), stop_ids=frozenset({300}))
    assert req.output_token_ids == [97, 98, 300] and outs[-1].text == "ab"
