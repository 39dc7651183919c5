"""Benchmark datasets: what to send (prompt, lengths) and, for traces, when.

- random: lengths uniform in [L(1-r), L(1+r)] as ``vllm bench serve --random-range-ratio r``
  draws them; prompts are random token ids (exact lengths through ``prompt: [ids]`` on
  ``/v1/completions``) or random common words (about one token each) for text endpoints.
- trace: lengths (and timestamps) from an Azure LLM trace CSV via `semipd.workload`, or from a
  public trace by name (``azure-conv-2023``, ``azure-code-2023``: `semipd.traces` fetches it).
- sharegpt: the first human turn of each conversation as the prompt, the reply's length
  as the output length, filtered as vLLM filters them.
Everything is deterministic given the `numpy` generator passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semipd.bench.tokens import HeuristicCounter, TokenCounter
from semipd.traces import resolve_trace
from semipd.workload import LengthDist, load_azure_trace

PROMPT_FORMATS: tuple[str, ...] = ("ids", "text")
DEFAULT_TOKEN_RANGE: tuple[int, int] = (1000, 30000)
"""Token ids [low, high) for random prompts: clear of the control tokens at the start of the
Llama-3, Qwen2/3 and Mistral vocabularies and inside each of them."""

# Common English words that most BPE vocabularies hold as one token with a leading space.
_WORDS: tuple[str, ...] = tuple(
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who its now find long down day did get "
    "come made may part over new sound take only little work know place year live me back give most very "
    "after thing our just name good sentence man think say great where help through much before line right "
    "too mean old any same tell boy follow came want show also around form three small set put end does "
    "another well large must big even such because turn here why ask went men read need land different home "
    "us move try kind hand picture again change off play spell air away animal house point page letter "
    "mother answer found study still learn should world high every near add food between own below country "
    "plant last school father keep tree never start city earth eye light thought head under story saw left "
    "few while along might close something seem next hard open example begin life always those both paper "
    "together got group often run important until children side feet car mile night walk white sea began "
    "grow took river four carry state once book hear stop without second later miss idea enough eat face".split()
)

# vLLM's ShareGPT filter: prompts and replies of at least 4 tokens, prompts up to 1024, both up to 2048.
_SHAREGPT_MIN_LEN = 4
_SHAREGPT_MAX_PROMPT_LEN = 1024
_SHAREGPT_MAX_TOTAL_LEN = 2048


@dataclass(frozen=True)
class BenchRequest:
    """One request to send: a prompt (text, or token ids) and the lengths it stands for.

    `arrival_time` is the trace's own time for the request (seconds, scaled), None otherwise.
    """

    prompt: str | tuple[int, ...]
    input_len: int
    output_len: int
    arrival_time: float | None = None

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("prompt must not be empty")
        if self.input_len < 1:
            raise ValueError(f"input_len must be >= 1, got {self.input_len}")
        if self.output_len < 1:
            raise ValueError(f"output_len must be >= 1, got {self.output_len}")


@dataclass(frozen=True)
class PromptMaker:
    """Random prompts of a requested token length.

    ``ids``: that many token ids drawn from `token_range` (exact). ``text``: that many common
    words; with a tokenizer (`counter.vocab_size` set) the word count is corrected toward the
    target and the measured count is returned, otherwise the target is returned as is.
    """

    prompt_format: str = "ids"
    token_range: tuple[int, int] = DEFAULT_TOKEN_RANGE
    counter: TokenCounter = field(default_factory=HeuristicCounter)

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        low, high = self.token_range
        if not 0 <= low < high:
            raise ValueError(f"token_range must satisfy 0 <= low < high, got {self.token_range}")

    def make(self, length: int, rng: np.random.Generator) -> tuple[str | tuple[int, ...], int]:
        """(prompt, its token count) for a prompt of about `length` tokens."""
        if self.prompt_format == "ids":
            return tuple(rng.integers(*self.token_range, size=length).tolist()), length
        words = rng.choice(_WORDS, size=length).tolist()
        if self.counter.vocab_size is None:
            return " ".join(words), length
        count = self.counter.count(" ".join(words))
        for _ in range(3):
            if count == length:
                break
            target = max(1, round(len(words) * length / count))
            words = words[:target] + rng.choice(_WORDS, size=max(0, target - len(words))).tolist()
            count = self.counter.count(" ".join(words))
        return " ".join(words), count


def random_requests(
    num_requests: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    rng: np.random.Generator,
    maker: PromptMaker,
) -> list[BenchRequest]:
    """Random prompts with lengths uniform in [L(1 - range_ratio), L(1 + range_ratio)]."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    inputs = _uniform_around(input_len, range_ratio, "input_len").sample(rng, num_requests)
    outputs = _uniform_around(output_len, range_ratio, "output_len").sample(rng, num_requests)
    requests = []
    for n_in, n_out in zip(inputs.tolist(), outputs.tolist(), strict=True):
        prompt, counted = maker.make(n_in, rng)
        requests.append(BenchRequest(prompt, counted, n_out))
    return requests


def _uniform_around(length: int, ratio: float, name: str) -> LengthDist:
    if length < 1:
        raise ValueError(f"{name} must be >= 1, got {length}")
    return LengthDist.uniform(max(1, int(length * (1 - ratio))), max(1, int(length * (1 + ratio))))


def trace_requests(
    path: str | Path,
    num_requests: int | None,
    rng: np.random.Generator,
    maker: PromptMaker,
    time_scale: float = 1.0,
    max_input_len: int | None = None,
    max_output_len: int | None = None,
    start_offset_s: float = 0.0,
) -> list[BenchRequest]:
    """The first `num_requests` requests of an Azure trace (all when None), with random
    prompts of the trace's lengths and the trace's scaled timestamps as `arrival_time`.
    `path` is a CSV file or a `semipd.traces.PUBLIC_TRACES` name."""
    workload = load_azure_trace(
        resolve_trace(path),
        time_scale=time_scale,
        max_requests=num_requests,
        max_input_len=max_input_len,
        max_output_len=max_output_len,
        start_offset_s=start_offset_s,
    )
    if not workload:
        raise ValueError(f"trace {path} has no requests after start offset {start_offset_s} s")
    requests = []
    for w in workload:
        prompt, counted = maker.make(w.input_len, rng)
        requests.append(BenchRequest(prompt, counted, w.output_len, arrival_time=w.arrival_time))
    return requests


def sharegpt_requests(
    path: str | Path,
    num_requests: int,
    rng: np.random.Generator,
    counter: TokenCounter,
    output_len: int | None = None,
) -> list[BenchRequest]:
    """`num_requests` conversations from a ShareGPT JSON file, in a seeded random order.

    Each entry needs ``conversations`` (or ``messages``): a list of turns with
    ``value``/``content``; the first two turns are the prompt and the reference reply.
    `output_len` fixes every output length instead of the reply's. Raises ValueError when
    fewer than `num_requests` entries pass the filter.
    """
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if output_len is not None and output_len < 1:
        raise ValueError(f"output_len must be >= 1, got {output_len}")
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"dataset-path: cannot read ShareGPT JSON {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise ValueError(f"dataset-path: {path} must hold a JSON list of conversations")
    requests: list[BenchRequest] = []
    for i in rng.permutation(len(entries)).tolist():
        turns = _turns(entries[i])
        if len(turns) < 2:
            continue
        prompt_len = counter.count(turns[0])
        reply_len = output_len if output_len is not None else counter.count(turns[1])
        too_short = prompt_len < _SHAREGPT_MIN_LEN or (output_len is None and reply_len < _SHAREGPT_MIN_LEN)
        too_long = prompt_len > _SHAREGPT_MAX_PROMPT_LEN or prompt_len + reply_len > _SHAREGPT_MAX_TOTAL_LEN
        if too_short or too_long:
            continue
        requests.append(BenchRequest(turns[0], prompt_len, reply_len))
        if len(requests) == num_requests:
            return requests
    raise ValueError(
        f"dataset-path: only {len(requests)} usable conversations in {path}, fewer than num-prompts {num_requests}"
    )


def _turns(entry: object) -> list[str]:
    """The prompt and reply texts of a ShareGPT entry, or [] when it lacks two non-empty turns."""
    if not isinstance(entry, dict):
        return []
    turns = entry.get("conversations") or entry.get("messages") or []
    texts = [t.get("value", t.get("content")) if isinstance(t, dict) else None for t in turns[:2]]
    return texts if len(texts) == 2 and all(isinstance(t, str) and t for t in texts) else []
