"""From a validated request body to the engine's inputs: prompt ids checked against the model,
and `SamplingParams` checked against the context length. Every refusal is a 400 naming the field."""

from __future__ import annotations

from semipd.engine.core.interface import EngineClient
from semipd.engine.sampling_params import SamplingParams
from semipd.server.errors import APIError, bad_request
from semipd.server.limits import max_text_chars
from semipd.server.prompts import encode
from semipd.server.protocol import CompletionRequest, SamplingBody, unsupported_options

MAX_STOP_STRINGS = 16
"""Most stop strings per request (each is checked on every token, so the list is bounded)."""
MAX_STOP_TOKEN_IDS = 64
COMPLETION_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for /v1/completions; chat defaults to the rest of the context."""


def check_supported(body: SamplingBody) -> None:
    """400 for the first option set to a value the server does not implement."""
    for name, reason in unsupported_options(body):
        raise bad_request(f"unsupported option {name!r}: {reason}", param=name, code="unsupported_parameter")
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", param="stream_options")


def check_model(body: SamplingBody, served_model_name: str) -> None:
    if body.model is not None and body.model != served_model_name:
        raise APIError(404, f"The model `{body.model}` does not exist; this server serves `{served_model_name}`.",
                       param="model", code="model_not_found", error_type="invalid_request_error")


async def completion_prompt_ids(body: CompletionRequest, client: EngineClient) -> list[int]:
    """Token ids of the single prompt of `body` (text, ids, or a list holding one of either)."""
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise bad_request(f"only one prompt per request is supported, got {len(prompt)}", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        check_text_length(len(prompt), client.max_model_len, "prompt")
        ids = await encode(client, prompt)
    else:
        ids = list(prompt)
    check_prompt_ids(ids, client, "prompt")
    return ids


def check_text_length(num_chars: int, max_model_len: int, param: str) -> None:
    """400 (``context_length_exceeded``, naming `param`) for a text too long to fit the context whatever
    its tokens (`semipd.server.limits.MAX_CHARS_PER_TOKEN`): refused without tokenizing it."""
    limit = max_text_chars(max_model_len)
    if num_chars > limit:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens; a text of {num_chars} characters "
            f"is too long for it (at most {limit} characters are accepted).", param=param,
            code="context_length_exceeded")


def check_prompt_ids(ids: list[int], client: EngineClient, param: str) -> None:
    if not ids:
        raise bad_request("the prompt is empty", param=param)
    if len(ids) >= client.max_model_len:
        raise bad_request(
            f"This model's maximum context length is {client.max_model_len} tokens; the prompt has {len(ids)} "
            "tokens, which leaves no room for output.", param=param, code="context_length_exceeded")
    if max(ids) >= client.vocab_size:
        raise bad_request(f"token id {max(ids)} is out of the vocabulary (size {client.vocab_size})", param=param)


def sampling_params(body: SamplingBody, num_prompt_tokens: int, client: EngineClient,
                    max_tokens: int | None, max_tokens_param: str, default_max_tokens: int | None) -> SamplingParams:
    """SamplingParams of `body`. `max_tokens` is the requested output budget (None: `default_max_tokens`,
    or the rest of the context when that is None too); a budget past the context is refused."""
    room = client.max_model_len - num_prompt_tokens
    if max_tokens is None:
        max_tokens = room if default_max_tokens is None else min(default_max_tokens, room)
    elif max_tokens > room:
        raise bad_request(
            f"This model's maximum context length is {client.max_model_len} tokens. However, you requested "
            f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, {max_tokens} for the "
            "completion). Please reduce the prompt or the completion length.",
            param=max_tokens_param, code="context_length_exceeded")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stop)}", param="stop")
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty", param="stop")
    stop_ids = list(body.stop_token_ids or [])
    if len(stop_ids) > MAX_STOP_TOKEN_IDS:
        raise bad_request(f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids are allowed", param="stop_token_ids")
    if stop_ids and max(stop_ids) >= client.vocab_size:
        raise bad_request(f"stop token id {max(stop_ids)} is out of the vocabulary", param="stop_token_ids")
    top_k = -1 if body.top_k in (None, 0) else body.top_k
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else float(body.temperature),
            top_p=1.0 if body.top_p is None else float(body.top_p),
            top_k=top_k if top_k == -1 else min(top_k, client.vocab_size),
            seed=body.seed,
            stop=stop,
            stop_token_ids=stop_ids,
            ignore_eos=body.ignore_eos,
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from None
