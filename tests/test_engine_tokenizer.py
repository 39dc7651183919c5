"""Tokenizers: a byte-level BPE ``tokenizer.json`` built offline, EOS ids from every config
file, chat templates, and incremental detokenization of multi-byte text."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from semipd.engine.tokenizer import ByteTokenizer, HFTokenizer

TEXT = "Hello world, héllo wörld! 你好世界 🚀🚀 tokens stream one by one. Ünïcödé ✓"
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<|eot|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world tokens stream one by one"] * 50, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": TEMPLATE}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2]}))
    return d


def test_encode_decode_round_trip(model_dir: Path) -> None:
    tok = HFTokenizer(model_dir, config_eos_token_ids=[1])
    ids = tok.encode(TEXT)
    assert ids[0] == 0 and tok.encode(TEXT, add_special_tokens=False) == ids[1:]
    assert tok.decode(ids) == TEXT
    assert tok.eos_token_ids == (1, 2)


def test_long_texts_are_tokenized_without_holding_the_gil(model_dir: Path) -> None:
    tok = HFTokenizer(model_dir)
    text = "hello world tokens stream one by one " * 20_000
    assert tok.encode(text) == Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text).ids
    ticks = 0
    worker = threading.Thread(target=tok.encode, args=(text,))
    worker.start()
    while worker.is_alive():
        time.sleep(0.001)
        ticks += 1
    assert ticks > 10  # this thread kept running while the other tokenized


def test_chat_template(model_dir: Path) -> None:
    tok = HFTokenizer(model_dir)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(msgs)
    assert text == "<s><|system|>be brief</s><|user|>hi</s><|assistant|>"
    assert tok.apply_chat_template(msgs, add_generation_prompt=False).endswith("hi</s>")
    ids = tok.apply_chat_template(msgs, tokenize=True)
    assert ids.count(0) == 1  # BOS from the template only, not added twice


def test_chat_template_from_jinja_file_and_missing(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text((model_dir / "tokenizer.json").read_text())
    with pytest.raises(ValueError, match="no chat template"):
        HFTokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    assert HFTokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "abc"}]) == "ABC"


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer(tmp_path)


@pytest.mark.parametrize("kind", ["hf", "byte"])
def test_incremental_detokenization_equals_full_decode(model_dir: Path, kind: str) -> None:
    tok = HFTokenizer(model_dir) if kind == "hf" else ByteTokenizer(512, 256, [257])
    prompt = tok.encode("prompt: ")
    out = tok.encode(TEXT, add_special_tokens=False) + [tok.eos_token_ids[0]]
    detok = tok.detokenizer(prompt)
    deltas = [detok.add(t) for t in out]
    assert "".join(deltas) == detok.text == TEXT
    assert all("\ufffd" not in d for d in deltas)
    # multi-byte characters span several tokens: some steps emit nothing, then the whole character
    assert "" in deltas and "🚀" in deltas


def test_byte_tokenizer() -> None:
    tok = ByteTokenizer(512, bos_token_id=256, eos_token_ids=[257])
    ids = tok.encode("hé")
    assert ids == [256, 104, 195, 169]
    assert tok.decode(ids) == "hé"
    assert tok.decode([*ids, 257, 400], skip_special_tokens=False) == "<|special_256|>hé<|special_257|>"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<|user|>\nhi\n<|assistant|>\n"
    with pytest.raises(ValueError, match="vocab_size"):
        ByteTokenizer(100)


def test_long_silent_runs_keep_the_window_bounded() -> None:
    from semipd.engine.tokenizer import ByteTokenizer, IncrementalDetokenizer

    tok = ByteTokenizer(512, None, (2,))
    detok = IncrementalDetokenizer(tok, tok.encode("hi ", add_special_tokens=False))
    for _ in range(1000):
        assert detok.add(300) == ""  # ids >= 256 decode to nothing
    assert len(detok._ids) <= IncrementalDetokenizer._MAX_SILENT + IncrementalDetokenizer._CONTEXT + 1
    for t in "é ok".encode():
        detok.add(t)
    assert detok.text == "é ok"
