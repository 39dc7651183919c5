"""The real server in Semi-PD mode on CPU (two workers, no SM partitions), driven by the official
`openai` client and by `semipd bench`; manual allocation through the admin endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.test_server_real import ServeProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    proc = ServeProcess("--mode", "semi-pd", "--controller", "static", "--max-model-len", "256",
                        "--num-kv-blocks", "128", "--block-size", "16")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_openai_client_streaming_and_not(server: ServeProcess) -> None:
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    full = oai.completions.create(model="tiny-llama", prompt=[1, 2, 3, 4, 5], max_tokens=12, temperature=0)
    assert full.usage.completion_tokens == 12
    chunks = list(oai.completions.create(model="tiny-llama", prompt=[1, 2, 3, 4, 5], max_tokens=12, temperature=0,
                                         stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert server.status()["mode"] == "semi-pd"


def test_manual_allocation(server: ServeProcess) -> None:
    r = httpx.post(f"{server.url}/semipd/allocation", json={"prefill_percentage": 25, "decode_percentage": 75},
                   timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    alloc = body["allocation"]  # the split applied: 25% snaps to the 8-SM grid of the simulated partitions
    assert alloc["prefill_percentage"] < 50 and alloc["prefill_percentage"] + alloc["decode_percentage"] == 100
    assert body["requested"] == {"prefill_percentage": 25, "decode_percentage": 75}
    assert body["snapped"] == (alloc["prefill_percentage"] != 25)
    bad = httpx.post(f"{server.url}/semipd/allocation", json={"prefill_percentage": 80, "decode_percentage": 80},
                     timeout=10)
    assert bad.status_code == 400 and "error" in bad.json()


def test_bench_against_the_real_server(server: ServeProcess, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "semipd.cli", "bench", "--base-url", server.url, "--dataset-name", "random",
           "--random-input-len", "24", "--random-output-len", "8", "--random-token-range", "0:255",
           "--num-prompts", "24", "--request-rate", "inf", "--max-concurrency", "8", "--goodput", "ttft:60000",
           "tpot:60000", "--no-progress", "--seed", "1", "--output-json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    summary = result.get("summary", result)
    # Dummy weights with the byte-level stand-in tokenizer: a request whose 8 tokens all decode to
    # no text streams no content, which the client counts as failed (as vLLM's client does).
    assert summary["completed"] + summary["failed"] == 24 and summary["completed"] >= 12
    errors = {r.get("error") for r in result.get("requests", []) if r.get("error")}
    assert errors <= {"stream carried no content"}, errors
    assert summary["total_output_tokens"] == summary["completed"] * 8
    assert summary["slo_attainment"] == summary["completed"] / 24
    status = server.status()
    kv = status.get("kv_cache_usage", status.get("kv_usage"))
    assert kv in (None, 0, 0.0)
