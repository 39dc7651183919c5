"""Public traces by name: fetched once into the cache, never cached when the fetch fails or
brings something else, and a clean error without network. No test here touches the network:
the downloads read file:// copies, or fail on purpose."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from semipd import traces
from semipd.bench.datasets import PromptMaker, trace_requests
from semipd.bench.runner import dataset_rng
from semipd.cli import main
from semipd.traces import PUBLIC_TRACES, PublicTrace, cache_dir, fetch_trace, resolve_trace
from semipd.workload import load_azure_trace

CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,3
2023-11-16 18:15:51.2224670,879,55
2023-11-16 18:15:53.0000000,91,200
"""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only file:// URLs may be opened."""
    real = urllib.request.urlopen

    def local_only(url: str, *args: object, **kwargs: object) -> object:
        assert url.startswith("file://"), f"a test tried to reach {url}"
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEMIPD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "traces"


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local copies of the public traces, served as file:// URLs under their real file names."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name, trace in list(PUBLIC_TRACES.items()):
        local = folder / trace.filename
        local.write_text(CSV)
        monkeypatch.setitem(PUBLIC_TRACES, name, PublicTrace(name, local.as_uri(), trace.description))
    return folder


def test_the_names_point_at_the_azure_public_dataset() -> None:
    base = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data/"
    assert PUBLIC_TRACES["azure-conv-2023"].url == base + "AzureLLMInferenceTrace_conv.csv"
    assert PUBLIC_TRACES["azure-code-2023"].url == base + "AzureLLMInferenceTrace_code.csv"


def test_paths_pass_through(tmp_path: Path) -> None:
    assert resolve_trace("traces/x.csv") == Path("traces/x.csv")
    assert resolve_trace(Path("azure-conv-2023")) == Path("azure-conv-2023")  # a Path is always a path


def test_cache_dir_default_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEMIPD_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "semipd" / "traces"
    monkeypatch.setenv("SEMIPD_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere" / "traces"


def test_a_named_trace_is_fetched_once(cache: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = resolve_trace("azure-conv-2023")
    assert path == cache / "AzureLLMInferenceTrace_conv.csv" and path.read_text() == CSV
    assert "azure-conv-2023: downloading the Azure LLM inference trace 2023" in capsys.readouterr().err
    assert sorted(p.name for p in cache.iterdir()) == ["AzureLLMInferenceTrace_conv.csv"]

    def offline(url: str, dest: Path) -> None:
        raise AssertionError("fetched again")

    monkeypatch.setattr(traces, "_fetch", offline)
    assert resolve_trace("azure-conv-2023") == path
    with pytest.raises(ValueError, match="unknown public trace 'azure-chat-2099'"):
        fetch_trace("azure-chat-2099")


def test_offline_is_a_clean_error_and_caches_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dest: Path) -> None:
        dest.write_text("TIMESTAMP,Cont")  # a partial download
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(traces, "_fetch", offline)
    with pytest.raises(ValueError) as info:
        resolve_trace("azure-code-2023")
    text = str(info.value)
    assert text.startswith("trace azure-code-2023: cannot download https://")
    assert "Temporary failure in name resolution" in text
    assert str(cache / "AzureLLMInferenceTrace_code.csv") in text and "SEMIPD_CACHE_DIR" in text
    assert list(cache.iterdir()) == []


def test_an_unusable_cache_directory_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SEMIPD_CACHE_DIR", str(blocker))
    with pytest.raises(ValueError, match=f"cannot create the cache directory {blocker / 'traces'} .*SEMIPD_CACHE_DIR"):
        fetch_trace("azure-conv-2023")


def test_a_download_that_is_not_the_trace_is_not_cached(cache: Path, mirror: Path) -> None:
    (mirror / "AzureLLMInferenceTrace_conv.csv").write_text("<html>captive portal</html>\n")
    with pytest.raises(ValueError, match="is not the trace .*captive portal"):
        fetch_trace("azure-conv-2023")
    assert list(cache.iterdir()) == []


def test_simulate_and_bench_take_a_name(cache: Path, mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", "azure-conv-2023", "--policy", "unified", "--monitoring-interval", "1"]) == 0
    assert "workload: 4 requests" in capsys.readouterr().out
    reqs = trace_requests("azure-code-2023", 3, dataset_rng(0), PromptMaker())
    assert [r.input_len for r in reqs] == [374, 396, 879]


def test_simulate_and_bench_offline(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    def offline(url: str, dest: Path) -> None:
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(traces, "_fetch", offline)
    assert main(["simulate", "--trace", "azure-conv-2023", "--policy", "unified"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: trace azure-conv-2023: cannot download" in err and "Traceback" not in err
    assert main(["bench", "--dataset-name", "trace", "--trace-path", "azure-conv-2023", "--num-prompts", "2",
                 "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert "semipd bench: error: trace azure-conv-2023: cannot download" in err and "Traceback" not in err


def test_the_shared_conversation_trace_through_its_name(azure_trace: Path, cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    trace = PUBLIC_TRACES["azure-conv-2023"]
    monkeypatch.setitem(PUBLIC_TRACES, trace.name, PublicTrace(trace.name, azure_trace.as_uri(), trace.description))
    path = resolve_trace("azure-conv-2023")
    assert path.read_bytes() == azure_trace.read_bytes()
    assert len(load_azure_trace(path)) == 19366
    assert [r.input_len for r in trace_requests("azure-conv-2023", 2, dataset_rng(0), PromptMaker())] == [374, 396]
