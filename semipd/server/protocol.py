"""Request bodies of the OpenAI-compatible endpoints (pydantic, strict).

Types are strict (``"5"`` is not a number) and unknown fields are refused, as OpenAI does
("Unrecognized request argument supplied"). Options the server does not implement are
accepted only at their neutral value (``n=1``, ``echo=false``, ``logprobs=null``...); any
other value is refused by `unsupported_options` with a 400 naming the option, never ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

TokenId = Annotated[StrictInt, Field(ge=0)]
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
Number = StrictFloat | StrictInt


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(StrictBody):
    include_usage: StrictBool = False


class SamplingBody(StrictBody):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: StrictStr | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=-1)] | None = None
    seed: Seed | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    # Accepted only at their neutral value (see `unsupported_options`).
    n: Any = None
    logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    repetition_penalty: Any = None
    min_tokens: Any = None


class CompletionRequest(SamplingBody):
    """POST /v1/completions. `prompt`: text, token ids, or a list holding one of either."""

    prompt: StrictStr | list[TokenId] | list[StrictStr] | list[list[TokenId]]
    best_of: Any = None
    echo: Any = None
    suffix: Any = None


class TextPart(StrictBody):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(StrictBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingBody):
    """POST /v1/chat/completions (text messages; no tools)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None


def _is_none_or(*neutral: Any) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return value is None or any(type(value) is type(x) and value == x for x in neutral)

    return check


_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (_is_none_or(1), "only n=1 is supported"),
    "best_of": (_is_none_or(1), "only best_of=1 is supported"),
    "logprobs": (_is_none_or(False), "logprobs are not supported"),
    "top_logprobs": (_is_none_or(0), "logprobs are not supported"),
    "echo": (_is_none_or(False), "echo is not supported"),
    "suffix": (_is_none_or(), "suffix is not supported"),
    "logit_bias": (_is_none_or({}), "logit_bias is not supported"),
    "presence_penalty": (_is_none_or(0, 0.0), "presence_penalty is not supported (only 0)"),
    "frequency_penalty": (_is_none_or(0, 0.0), "frequency_penalty is not supported (only 0)"),
    "repetition_penalty": (_is_none_or(1, 1.0), "repetition_penalty is not supported (only 1)"),
    "min_tokens": (_is_none_or(0), "min_tokens is not supported (only 0)"),
    "tools": (_is_none_or([]), "tools are not supported"),
    "tool_choice": (_is_none_or("none"), "tool_choice is not supported"),
    "parallel_tool_calls": (_is_none_or(False, True), "parallel_tool_calls must be a boolean (no tools here)"),
    "functions": (_is_none_or([]), "functions are not supported"),
    "function_call": (_is_none_or("none"), "function_call is not supported"),
    "response_format": (_is_none_or({"type": "text"}), "only response_format {\"type\": \"text\"} is supported"),
}


def unsupported_options(body: SamplingBody) -> list[tuple[str, str]]:
    """(field, reason) for every option of `body` set to a value the server does not implement."""
    found = []
    for name, (is_neutral, reason) in _NEUTRAL.items():
        if name in type(body).model_fields and not is_neutral(getattr(body, name)):
            found.append((name, reason))
    return found
