"""`LLM`: the offline API. ``LLM(model, ...).generate(prompts, params)`` queues every prompt
and steps the engine until all of them finish; outputs come back in prompt order.

The engine runs in this process (no engine-core process: offline generation has no event
loop to keep free); its token-id deltas go through the same `OutputProcessor` (text, stop
strings) as the server's."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from semipd.engine.engine_config import EngineConfig
from semipd.engine.factory import create_engine
from semipd.engine.output_processor import OutputProcessor
from semipd.engine.sampling_params import CompletionOutput, RequestOutput, SamplingParams

Prompt = str | list[int]


class LLM:
    """Offline batch generation on the real engine.

    Extra keyword arguments are `EngineConfig` fields (``max_num_seqs``, ``max_model_len``,
    ``num_kv_blocks``, ``enforce_eager``, ``semipd=SemiPDConfig(...)`` with ``mode="semi-pd"``, ...).
    """

    def __init__(self, model: str | os.PathLike, load_format: str = "auto", dtype: str = "auto", device: str = "auto",
                 mode: str = "unified", **engine_kwargs: Any) -> None:
        config = EngineConfig(model=os.fspath(model), load_format=load_format, dtype=dtype, device=device, mode=mode,
                              **engine_kwargs)
        self.engine = create_engine(config)
        self.tokenizer = self.engine.tokenizer
        self._counter = 0

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt given as text or ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; pass token ids")
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, list):
            raise ValueError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        return prompt

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 on_output: Callable[[RequestOutput], None] | None = None) -> list[CompletionOutput]:
        """Generate for every prompt (a string, a token-id list, or a list of either).

        `sampling_params`: one for all prompts, or one per prompt (default `SamplingParams()`).
        `on_output` sees every streamed `RequestOutput` (progress, streaming to a console).
        """
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        ids = [self.encode(p) for p in prompts]
        for token_ids, p in zip(ids, params, strict=True):
            self.engine.validate_request(token_ids, p)
        rids = []
        processor = OutputProcessor(self.tokenizer)
        for token_ids, p in zip(ids, params, strict=True):
            rid = f"llm-{self._counter}"
            self._counter += 1
            self.engine.add_request(rid, token_ids, p)
            processor.add(rid, token_ids, p)
            rids.append(rid)
        final: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for delta in self.engine.step():
                processed = processor.process(delta)
                if processed is None:
                    continue
                out = processed.output
                if processed.abort_in_engine:
                    self.engine.abort(out.rid)
                if on_output is not None:
                    on_output(out)
                if out.finished:
                    final[out.rid] = out
        return [CompletionOutput(prompt_token_ids=token_ids, token_ids=final[rid].token_ids, text=final[rid].text,
                                 finish_reason=final[rid].finish_reason) for rid, token_ids in zip(rids, ids,
                                                                                                    strict=True)]
