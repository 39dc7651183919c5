"""SSE decoding and stream timing on realistic chunks from vLLM, SGLang and our server."""

from __future__ import annotations

import json

import pytest

from semipd.bench.client import Endpoint, StreamTimings, api_url
from semipd.bench.datasets import BenchRequest
from semipd.bench.sse import SSEDecoder, parse_chunk

# A vLLM /v1/completions stream with include_usage: token chunks, a finish chunk, a usage chunk.
VLLM_COMPLETIONS = (
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,'
    b'"text":" Hello","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,'
    b'"text":" w\xc3\xb6rld","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,'
    b'"text":"!","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":null}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
)

# A chat stream as vLLM/SGLang send it: role chunk with empty content first, CRLF line ends here.
CHAT_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
    {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}},
]


def _decode_all(stream: bytes, step: int) -> list[str]:
    decoder = SSEDecoder()
    events: list[str] = []
    for i in range(0, len(stream), step):
        events += decoder.feed(stream[i : i + step])
    return events + decoder.flush()


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 10_000])
def test_decoder_is_independent_of_how_bytes_are_split(step: int) -> None:
    events = _decode_all(VLLM_COMPLETIONS, step)
    assert len(events) == 5 and events[-1] == "[DONE]"
    assert json.loads(events[1])["choices"][0]["text"] == " wörld"  # a split 2-byte character survives


def test_decoder_handles_crlf_comments_fields_and_multiline_data() -> None:
    raw = (
        b": keep-alive\r\n\r\n"
        b"event: message\r\nid: 3\r\ndata:{\"a\":\r\ndata: 1}\r\n\r\n"
        b"retry: 10\r\r"
        b"data: [DONE]\r\n\r\n"
    )
    for step in (1, 5, len(raw)):
        assert _decode_all(raw, step) == ['{"a":\n1}', "[DONE]"]


def test_decoder_flushes_an_unterminated_last_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.flush() == ["[DONE]"]
    assert decoder.flush() == []


def test_parse_chunk_reads_text_delta_usage_and_errors() -> None:
    events = _decode_all(VLLM_COMPLETIONS, 10_000)
    chunks = [parse_chunk(json.loads(e)) for e in events[:-1]]
    assert [c.text for c in chunks] == [" Hello", " wörld", "!", ""]
    assert chunks[-1].completion_tokens == 3 and chunks[-1].prompt_tokens == 5
    assert [parse_chunk(c).text for c in CHAT_CHUNKS] == ["", "Hi", " there", "hmm", "", ""]
    assert [c.is_token for c in chunks] == [True, True, True, False]
    assert [parse_chunk(c).is_token for c in CHAT_CHUNKS] == [False, True, True, True, False, False]


def test_a_token_without_text_still_counts_but_closing_chunks_do_not() -> None:
    empty = {"choices": [{"index": 0, "text": "", "finish_reason": None}]}
    closing = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    chat_empty = {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]}
    assert parse_chunk(empty).is_token and parse_chunk(chat_empty).is_token
    assert not parse_chunk(closing).is_token and not parse_chunk({"choices": []}).is_token
    new_style = parse_chunk({"error": {"message": "out of KV blocks", "type": "InternalServerError", "code": 500}})
    old_style = parse_chunk({"object": "error", "message": "bad prompt", "type": "BadRequestError", "code": 400})
    assert new_style.error == "server error in stream: out of KV blocks"
    assert old_style.error == "server error in stream: bad prompt"


def test_stream_timings_ignore_empty_chunks() -> None:
    timings = StreamTimings()
    arrivals = [0.010, 0.050, 0.070, 0.100, 0.110, 0.110]
    for chunk, t in zip(CHAT_CHUNKS, arrivals, strict=True):
        timings.on_data(json.dumps(chunk), t)
    assert not timings.done
    timings.on_data("[DONE]", 0.111)
    timings.on_data(json.dumps(CHAT_CHUNKS[1]), 0.2)  # after [DONE]: ignored
    assert timings.done and timings.end == 0.111 and not timings.error
    assert timings.ttft == pytest.approx(0.050)  # the role chunk at 10 ms is not the first token
    assert timings.itls == pytest.approx([0.020, 0.030])
    assert timings.chunks == 3
    assert (timings.completion_tokens, timings.prompt_tokens) == (3, 7)


def test_stream_timings_record_a_mid_stream_error() -> None:
    timings = StreamTimings()
    timings.on_data(json.dumps(CHAT_CHUNKS[1]), 0.05)
    timings.on_data(json.dumps({"error": {"message": "engine died"}}), 0.06)
    assert timings.error == "server error in stream: engine died"
    with pytest.raises(json.JSONDecodeError):
        timings.on_data("{not json", 0.07)


def test_payloads_for_both_endpoints() -> None:
    ids = BenchRequest((11, 12, 13), 3, 16)
    text = BenchRequest("hello there", 2, 4)
    body = Endpoint("http://h:1/v1/completions", "m").payload(ids)
    assert body["prompt"] == [11, 12, 13] and body["max_tokens"] == 16
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["temperature"] == 0.0
    chat = Endpoint("http://h:1/v1/chat/completions", "m", chat=True, ignore_eos=False)
    body = chat.payload(text)
    assert body["messages"] == [{"role": "user", "content": "hello there"}] and "ignore_eos" not in body
    with pytest.raises(ValueError, match="text prompts"):
        chat.payload(ids)
    assert Endpoint("http://h:1/x", "m", api_key="k").headers() == {"Authorization": "Bearer k"}
    with pytest.raises(ValueError, match="url"):
        Endpoint("h:1/x", "m")


def test_api_url_joins_without_doubling_v1() -> None:
    assert api_url("http://h:8000", "/v1/completions") == "http://h:8000/v1/completions"
    assert api_url("http://h:8000/v1/", "/v1/models") == "http://h:8000/v1/models"
    assert api_url("http://h:8000/", "generate") == "http://h:8000/generate"
