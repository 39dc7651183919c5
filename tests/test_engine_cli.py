"""`semipd generate` through the real entry point (CPU, tiny preset)."""

from __future__ import annotations

import json

import pytest

from semipd.cli import main


def test_generate_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["generate", "--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu", "--prompt", "Hi",
               "--prompt", "there", "--max-tokens", "5", "--ignore-eos", "--json"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["prompt"] for d in lines] == ["Hi", "there"]
    assert all(len(d["token_ids"]) == 5 and d["finish_reason"] == "length" for d in lines)


def test_generate_chat_and_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["generate", "--model", "tiny-qwen3", "--load-format", "dummy", "--device", "cpu", "--chat",
               "--max-tokens", "3", "--temperature", "0.7", "--sampling-seed", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[3 tokens" in out and "tokens/s" in out


def test_bad_option_exits() -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--model", "tiny-llama", "--dtype", "int4"])


@pytest.mark.parametrize(("argv", "words"), [
    (["--model", "tiny-llama"], "--model tiny-llama is a preset (a model shape without weights): add --load-format"),
    (["--model", "/no/such/model"], "neither a directory nor a preset"),
    (["--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu", "--max-tokens", "0"], "max_tokens"),
    (["--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu", "--temperature", "-1"], "temperature"),
])
def test_bad_inputs_are_one_error_line(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("semipd generate: error: ") and words in err and len(err.splitlines()) == 1
