"""The OpenAI-compatible server around a fake engine (real uvicorn on a free port)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from test_server_support import FakeAsyncEngine, FakeEngine, FakeSemiPDEngine, running, wait_until

from semipd.engine.sampling_params import RequestOutput
from semipd.server import create_app
from semipd.server.openai_api import ChatFormat, CompletionFormat

MODEL = "fake-model"


@pytest.fixture(scope="module")
def fake() -> FakeAsyncEngine:
    return FakeAsyncEngine()


@pytest.fixture(scope="module")
def client(fake: FakeAsyncEngine) -> Iterator[httpx.Client]:
    with running(create_app(fake, MODEL)) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def sse_events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]


def assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def test_lifespan_starts_and_stops_engine() -> None:
    engine = FakeAsyncEngine()
    with running(create_app(engine, MODEL)):
        assert engine.started and not engine.stopped
    assert engine.stopped


def test_health_reports_a_stopped_engine() -> None:
    engine = FakeAsyncEngine()
    with running(create_app(engine, MODEL)) as server:
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
        engine.stop()
        assert assert_error(httpx.get(f"{server.url}/health"), 503)["code"] == "engine_not_running"


def test_models_and_health(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_error(client.get("/v1/models/other"), 404, "model")
    assert client.get("/health").status_code == 200


def test_completion(client: httpx.Client, fake: FakeAsyncEngine) -> None:
    body = client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 5}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == MODEL and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "text": "ABCDE", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert fake.requests[body["id"]][0] == [256, ord("h"), ord("i")]


def test_completion_stream_with_usage(client: httpx.Client) -> None:
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": True,
                                                "stream_options": {"include_usage": True}})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "ABCD"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "length"]
    assert all(c["usage"] is None and c["object"] == "text_completion" for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert len({c["id"] for c in chunks}) == 1


def test_completion_stream_without_usage(client: httpx.Client) -> None:
    resp = client.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2, "stream": True})
    chunks = [json.loads(e) for e in sse_events(resp.text)[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["A", "B"]
    assert all("usage" not in c for c in chunks)


def test_chat(client: httpx.Client, fake: FakeAsyncEngine) -> None:
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]}]
    body = client.post("/v1/chat/completions",
                       json={"model": MODEL, "messages": messages, "max_completion_tokens": 3}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "ABC"}
    assert body["choices"][0]["finish_reason"] == "length"
    prompt = fake.requests[body["id"]][0]
    assert bytes(prompt[1:]).decode() == "system: be brief\nuser: hello\nassistant: "
    assert body["usage"]["prompt_tokens"] == len(prompt)


def test_chat_stream(client: httpx.Client) -> None:
    resp = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}})
    chunks = [json.loads(e) for e in sse_events(resp.text)[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "ABC"
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[-1]["usage"]["completion_tokens"] == 3 and chunks[-1]["object"] == "chat.completion.chunk"


def test_long_prompts_are_tokenized() -> None:
    long_text = "y" * 20_000  # tokenized in a worker thread: within the text bound of 1000 tokens, over the context
    with running(create_app(FakeAsyncEngine(FakeEngine(max_model_len=1000)), MODEL)) as server:
        err = assert_error(httpx.post(f"{server.url}/v1/completions", json={"prompt": long_text}), 400, "prompt")
        assert "20001 tokens" in err["message"]
        resp = httpx.post(f"{server.url}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": long_text}]})
        assert "tokens" in assert_error(resp, 400, "messages")["message"]


def test_chat_default_max_tokens_is_rest_of_context(client: httpx.Client, fake: FakeAsyncEngine) -> None:
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}).json()
    prompt, params = fake.requests[body["id"]]
    assert params.max_tokens == 128 - len(prompt)


def test_sampling_options_reach_engine(client: httpx.Client, fake: FakeAsyncEngine) -> None:
    body = client.post("/v1/completions", json={
        "prompt": "x", "max_tokens": 3, "temperature": 0, "top_p": 0.5, "top_k": 5000, "seed": 7,
        "stop": "never", "stop_token_ids": [257], "ignore_eos": True, "user": "u", "n": 1, "echo": False,
        "logprobs": None, "presence_penalty": 0}).json()
    params = fake.requests[body["id"]][1]
    assert (params.temperature, params.top_p, params.top_k, params.seed) == (0.0, 0.5, 512, 7)
    assert params.stop == ["never"] and params.stop_token_ids == [257] and params.ignore_eos


def test_stop_string(client: httpx.Client) -> None:
    body = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10, "stop": ["CD", "zz"]}).json()
    assert body["choices"][0]["text"] == "AB" and body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("prompt, expected", [([5, 6], [5, 6]), (["hi"], [256, 104, 105]), ([[7, 8]], [7, 8])])
def test_prompt_forms(client: httpx.Client, fake: FakeAsyncEngine, prompt: object, expected: list[int]) -> None:
    body = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}).json()
    assert fake.requests[body["id"]][0] == expected


BAD_COMPLETIONS = [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**12}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 127}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": -2}, "top_k"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "seed": 2**64}, "seed"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stop": ["s"] * 17}, "stop"),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "stop_token_ids": [512]}, "stop_token_ids"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "stream": True, "stream_options": {"include_usage": 1}}, "stream_options"),
    ({"prompt": "x" * 200}, "prompt"),
    ({"prompt": list(range(128))}, "prompt"),
    ({"prompt": [1, 512]}, "prompt"),
    ({"prompt": [1, -1]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [[1], [2]]}, "prompt"),
    ({"prompt": {"text": "x"}}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "logprobs": 1}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "x", "frequency_penalty": 1}, "frequency_penalty"),
    ({"prompt": "x", "repetition_penalty": 1.2}, "repetition_penalty"),
    ({"prompt": "x", "min_tokens": 3}, "min_tokens"),
    ({"prompt": "x", "unknown_option": 1}, "unknown_option"),
    ({"prompt": "x", "tools": []}, "tools"),
]


@pytest.mark.parametrize("body, param", BAD_COMPLETIONS)
def test_bad_completion_requests(client: httpx.Client, body: dict, param: str) -> None:
    err = assert_error(client.post("/v1/completions", json=body), 400, param)
    assert err["type"] == "invalid_request_error"


CHAT = [{"role": "user", "content": "x"}]
BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": CHAT, "max_completion_tokens": 10**6}, "max_completion_tokens"),
    ({"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": CHAT, "tool_choice": "auto"}, "tool_choice"),
    ({"messages": CHAT, "functions": [{"name": "f"}]}, "functions"),
    ({"messages": CHAT, "function_call": "auto"}, "function_call"),
    ({"messages": CHAT, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": CHAT, "logprobs": True}, "logprobs"),
    ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": CHAT, "n": 3}, "n"),
    ({"messages": CHAT, "prompt": "x"}, "prompt"),
]


@pytest.mark.parametrize("body, param", BAD_CHATS)
def test_bad_chat_requests(client: httpx.Client, body: dict, param: str) -> None:
    assert_error(client.post("/v1/chat/completions", json=body), 400, param)


def test_chat_neutral_options_accepted(client: httpx.Client) -> None:
    resp = client.post("/v1/chat/completions", json={
        "messages": CHAT, "max_tokens": 1, "response_format": {"type": "text"}, "logprobs": False,
        "tool_choice": "none", "tools": [], "parallel_tool_calls": True})
    assert resp.status_code == 200, resp.text


def test_unknown_model_is_404(client: httpx.Client) -> None:
    err = assert_error(client.post("/v1/completions", json={"model": "gpt-5", "prompt": "x"}), 404, "model")
    assert err["code"] == "model_not_found"
    assert_error(client.post("/v1/chat/completions", json={"model": "gpt-5", "messages": CHAT}), 404, "model")


@pytest.mark.parametrize("content, headers", [
    (b"{not json", {"content-type": "application/json"}),
    (b"[1, 2]", {"content-type": "application/json"}),
    (b"", {"content-type": "application/json"}),
    (b"prompt=x", {"content-type": "application/x-www-form-urlencoded"}),
    (b"\xff\xfe", {"content-type": "application/json"}),
])
def test_malformed_bodies(client: httpx.Client, content: bytes, headers: dict) -> None:
    for path in ("/v1/completions", "/v1/chat/completions", "/semipd/allocation"):
        assert_error(client.post(path, content=content, headers=headers), 400)


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/completions"), 405)


def test_bad_requests_leave_server_serving(client: httpx.Client, fake: FakeAsyncEngine) -> None:
    for body, _ in BAD_COMPLETIONS:
        client.post("/v1/completions", json=body)
    assert not fake.active
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).json()["choices"][0]["text"] == "AB"


def test_engine_failure_is_500_and_isolated(client: httpx.Client, fake: FakeAsyncEngine) -> None:
    fail = [FakeAsyncEngine.FAIL_TOKEN, 1, 2]
    err = assert_error(client.post("/v1/completions", json={"prompt": fail, "max_tokens": 5}), 500)
    assert err["type"] == "server_error" and err["code"] == "engine_error" and "boom" in err["message"]
    resp = client.post("/v1/completions", json={"prompt": fail, "max_tokens": 5, "stream": True})
    events = sse_events(resp.text)
    assert resp.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["text"] == "A"
    assert json.loads(events[-2])["error"]["code"] == "engine_error"
    assert client.post("/v1/completions", json={"prompt": [1], "max_tokens": 2}).json()["choices"][0]["text"] == "AB"
    assert not fake.active


def test_text_prompt_without_tokenizer() -> None:
    engine = FakeAsyncEngine(FakeEngine(tokenizer=None))
    with running(create_app(engine, MODEL)) as server:
        resp = httpx.post(f"{server.url}/v1/completions", json={"prompt": "hi"})
        assert assert_error(resp, 400)["code"] == "no_tokenizer"
        assert httpx.post(f"{server.url}/v1/completions", json={"prompt": [1, 2]}).status_code == 200


def test_api_key() -> None:
    with running(create_app(FakeAsyncEngine(), MODEL, api_key="sekret")) as server:
        url = server.url
        body = {"prompt": "x", "max_tokens": 1}
        assert_error(httpx.post(f"{url}/v1/completions", json=body), 401)
        err = assert_error(httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer no"}), 401)
        assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
        assert_error(httpx.get(f"{url}/v1/models"), 401)
        assert_error(httpx.get(f"{url}/semipd/status"), 401)
        assert_error(httpx.post(f"{url}/v1/completions", content=b"{bad", headers={"content-type": "application/json"}),
                     401)
        assert httpx.get(f"{url}/health").status_code == 200
        auth = {"Authorization": "Bearer sekret"}
        assert httpx.post(f"{url}/v1/completions", json=body, headers=auth).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers=auth).status_code == 200


def test_queue_full_is_503_with_retry_after() -> None:
    hold = threading.Event()
    engine = FakeAsyncEngine(max_waiting=1, hold=hold)
    with running(create_app(engine, MODEL)) as server:
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(
            httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=10).status_code))
        first.start()
        assert wait_until(lambda: engine.active)
        for body in ({"prompt": "y", "max_tokens": 1}, {"prompt": "y", "max_tokens": 1, "stream": True}):
            resp = httpx.post(f"{server.url}/v1/completions", json=body, timeout=10)
            err = assert_error(resp, 503)
            assert err["code"] == "queue_full" and int(resp.headers["Retry-After"]) >= 1
        hold.set()
        first.join()
        assert results == [200]
        assert httpx.post(f"{server.url}/v1/completions", json={"prompt": "z", "max_tokens": 1}).status_code == 200


def test_disconnect_mid_stream_aborts() -> None:
    engine = FakeAsyncEngine(token_delay=0.05)
    with running(create_app(engine, MODEL)) as server, httpx.Client(base_url=server.url) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 100, "stream": True}) as resp:
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            rid = json.loads(first[len("data: "):])["id"]
            next(line for line in lines if line.startswith("data: "))
        assert wait_until(lambda: rid in engine.aborted)
        assert rid not in engine.active
        assert engine.get_status()["num_running"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_while_waiting_aborts(stream: bool) -> None:
    engine = FakeAsyncEngine(first_token_delay=30)
    with running(create_app(engine, MODEL)) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "stream": stream}, timeout=0.3)
        assert wait_until(lambda: len(engine.aborted) == 1 and not engine.active)


def test_status(client: httpx.Client) -> None:
    status = client.get("/semipd/status").json()
    assert status["mode"] == "unified" and "kv_cache_usage" in status


def test_allocation_refused_without_partitions(client: httpx.Client) -> None:
    err = assert_error(client.post("/semipd/allocation", json={"prefill_percentage": 40, "decode_percentage": 60}),
                       400)
    assert err["code"] == "no_partitions" and "unified" in err["message"]


def test_allocation_with_partitions() -> None:
    engine = FakeSemiPDEngine()
    with running(create_app(engine, MODEL)) as server, httpx.Client(base_url=server.url) as c:
        resp = c.post("/semipd/allocation", json={"prefill_percentage": 64, "decode_percentage": 36})
        assert resp.status_code == 200, resp.text
        assert resp.json()["allocation"] == {"prefill_percentage": 64.0, "decode_percentage": 36.0}
        assert engine.allocation.prefill_percentage == 64
        assert c.get("/semipd/status").json()["allocation"]["prefill_percentage"] == 64
        for body in ({"prefill_percentage": 70, "decode_percentage": 40}, {"prefill_percentage": 0,
                     "decode_percentage": 100}, {"prefill_percentage": "50", "decode_percentage": 50},
                     {"prefill_percentage": 50}, {"prefill_percentage": 20, "decode_percentage": 80},
                     {"prefill_percentage": 48, "decode_percentage": 52, "extra": 1}):
            assert_error(c.post("/semipd/allocation", json=body), 400)
        assert engine.allocation.prefill_percentage == 64


def test_metrics(client: httpx.Client) -> None:
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in ("semipd:time_to_first_token_seconds", "semipd:time_per_output_token_seconds",
                 "semipd:inter_token_latency_seconds", "semipd:e2e_request_latency_seconds",
                 "semipd:queue_time_seconds", "semipd:num_requests_running", "semipd:num_requests_waiting",
                 "semipd:kv_cache_usage_perc", "semipd:sm_reallocations_total"):
        assert name in text, name
    count = next(line for line in text.splitlines() if line.startswith("semipd:time_to_first_token_seconds_count"))
    assert float(count.split()[-1]) >= 1


def test_tokens_without_text_still_stream_a_chunk() -> None:
    partial = RequestOutput(rid="r", new_token_ids=[0xE2], new_text="", token_ids=[0xE2], text="", finished=False,
                            finish_reason=None, num_prompt_tokens=1, num_output_tokens=1)
    nothing = RequestOutput(rid="r", new_token_ids=[], new_text="", token_ids=[0xE2], text="", finished=False,
                            finish_reason=None, num_prompt_tokens=1, num_output_tokens=1)
    completion, chat = CompletionFormat("cmpl-1", MODEL, False), ChatFormat("chatcmpl-1", MODEL, False)
    assert [c["choices"][0]["text"] for c in completion.output_chunks(partial)] == [""]
    assert [c["choices"][0]["delta"] for c in chat.output_chunks(partial)] == [{"content": ""}]
    assert completion.output_chunks(nothing) == [] and chat.output_chunks(nothing) == []
