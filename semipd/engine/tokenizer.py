"""Tokenizers: Hugging Face ``tokenizer.json`` (through the `tokenizers` library), a byte-level
stand-in for models without tokenizer files (dummy weights, tiny presets), chat templates
rendered with jinja2, and incremental detokenization for streaming."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

LONG_TEXT_CHARS = 16_384
"""Texts longer than this are tokenized without holding the GIL (the API server tokenizes them in a
worker thread, and its event loop must keep running meanwhile)."""
BYTE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _compile_template(source: str) -> jinja2.Template:
    """Compile a chat template the way transformers does (sandboxed, trim/lstrip blocks)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class Tokenizer(ABC):
    """Text <-> token ids, EOS ids, chat template."""

    def __init__(self, eos_token_ids: Sequence[int], bos_token: str | None, eos_token: str | None,
                 chat_template: str | None) -> None:
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template else None

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` adds what the tokenizer adds by default (BOS)."""

    @abstractmethod
    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`; incomplete UTF-8 at the end shows as U+FFFD."""

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, **kwargs: Any) -> str | list[int]:
        """Render `messages` ([{"role", "content"}, ...]) with the model's template; token ids if `tokenize`."""
        if self._template is None:
            raise ValueError("this tokenizer has no chat template")
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)
        # The template writes BOS itself where the model wants it.
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def detokenizer(self, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_token_ids, skip_special_tokens)


class HFTokenizer(Tokenizer):
    """A Hugging Face fast tokenizer from a model directory (``tokenizer.json`` + ``tokenizer_config.json``)."""

    def __init__(self, model_dir: str | Path, config_eos_token_ids: Sequence[int] = ()) -> None:
        from tokenizers import Tokenizer as FastTokenizer

        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer not found: {path}")
        self._tok = FastTokenizer.from_file(str(path))
        tok_cfg = _read_json(model_dir / "tokenizer_config.json")
        gen_cfg = _read_json(model_dir / "generation_config.json")
        bos, eos = _token_text(tok_cfg.get("bos_token")), _token_text(tok_cfg.get("eos_token"))
        eos_ids = list(config_eos_token_ids) + _as_list(gen_cfg.get("eos_token_id"))
        if eos is not None and self._tok.token_to_id(eos) is not None:
            eos_ids.append(self._tok.token_to_id(eos))
        super().__init__(eos_ids, bos, eos, _chat_template(model_dir, tok_cfg))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) > LONG_TEXT_CHARS:  # encode holds the GIL throughout; encode_batch lets other threads run
            return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as token ids 0..255; `bos_token_id` and the EOS ids are the special tokens.

    For models without tokenizer files (dummy weights): text prompts and streaming work
    end to end, though the model's real vocabulary is not used. Ids >= 256 other than the
    special ones decode to nothing.
    """

    def __init__(self, vocab_size: int, bos_token_id: int | None = None, eos_token_ids: Sequence[int] = ()) -> None:
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be >= 256 for byte tokens, got {vocab_size}")
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self._special = {i: f"<|special_{i}|>" for i in [*([bos_token_id] if bos_token_id is not None else []),
                                                         *eos_token_ids]}
        super().__init__(eos_token_ids, None, None, BYTE_CHAT_TEMPLATE)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id, *ids] if add_special_tokens and self.bos_token_id is not None else ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out: list[str] = []
        pending = bytearray()
        for t in token_ids:
            if 0 <= t < 256:
                pending.append(t)
                continue
            if not skip_special_tokens and t in self._special:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
                out.append(self._special[t])
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class IncrementalDetokenizer:
    """Streams text token by token without re-decoding the whole output.

    Each call decodes only a short window: the tokens since the last emitted text plus the
    tokens of that text, decoded twice (with and without the new tokens) so that whatever
    a tokenizer does at the start of a decode (a dropped leading space) cancels out. Text is
    held back while it ends in an incomplete UTF-8 character (U+FFFD), so a multi-byte
    character split across tokens comes out whole.
    """

    _CONTEXT = 5
    _MAX_SILENT = 32
    """Tokens that produced no text at all (special or unprintable ids) are dropped from the window
    past this many, so a long silent run costs O(1) per token instead of re-decoding it all."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_token_ids[-self._CONTEXT:])
        self._read_offset = len(self._ids)
        self.text = ""

    def add(self, token_id: int) -> str:
        """Feed one generated token; returns the text it completes (maybe "")."""
        self._ids.append(token_id)
        prefix = self._tok.decode(self._ids[:self._read_offset], self._skip)
        full = self._tok.decode(self._ids, self._skip)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            if full == prefix and len(self._ids) - self._read_offset > self._MAX_SILENT:
                del self._ids[:len(self._ids) - self._CONTEXT]
                self._read_offset = len(self._ids)
            return ""
        delta = full[len(prefix):]
        # Only the window from the new prefix offset is ever decoded again.
        del self._ids[:self._read_offset]
        self._read_offset = len(self._ids)
        self.text += delta
        return delta


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open() as f:
        return json.load(f)


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _token_text(value: Any) -> str | None:
    """tokenizer_config gives special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _chat_template(model_dir: Path, tok_cfg: dict[str, Any]) -> str | None:
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        named = {t.get("name"): t.get("template") for t in template}
        return named.get("default") or next(iter(named.values()), None)
    if template is None and (model_dir / "chat_template.json").is_file():
        return _read_json(model_dir / "chat_template.json").get("chat_template")
    return template


def tokenizer_dir(model: str, tokenizer: str | None = None) -> str | None:
    """The directory holding ``tokenizer.json`` (`tokenizer`, else the model directory), or None for
    the byte-level stand-in (dummy models, presets). FileNotFoundError when `tokenizer` names a
    directory without one."""
    directory = tokenizer or (model if Path(model).is_dir() else None)
    if directory is not None and (Path(directory) / "tokenizer.json").is_file():
        return str(directory)
    if tokenizer is not None:
        raise FileNotFoundError(f"no tokenizer.json in {tokenizer}")
    return None


def make_tokenizer(directory: str | None, eos_token_ids: Sequence[int], bos_token_id: int | None,
                   vocab_size: int) -> Tokenizer:
    """`HFTokenizer` of `directory`, or the byte-level stand-in when it is None."""
    if directory is not None:
        return HFTokenizer(directory, eos_token_ids)
    return ByteTokenizer(vocab_size, bos_token_id, eos_token_ids)
