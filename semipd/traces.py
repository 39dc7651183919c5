"""Public request traces by name, downloaded on first use and cached.

``azure-conv-2023`` and ``azure-code-2023`` are the Azure LLM inference traces of 2023 (the
conversation and the coding service; Patel et al., "Splitwise: Efficient Generative LLM Inference
Using Phase Splitting", ISCA 2024), published under CC-BY 4.0 in the Azure/AzurePublicDataset
GitHub repository as ``data/AzureLLMInferenceTrace_conv.csv`` and ``..._code.csv``. Each row is
one request: TIMESTAMP, ContextTokens (prompt tokens), GeneratedTokens (output tokens).

`resolve_trace` turns a command-line ``--trace`` value into a file: a known name is fetched once
from its raw GitHub URL into the cache directory (``$SEMIPD_CACHE_DIR``, else
``~/.cache/semipd``; files under ``traces/``), anything else is taken as a path. Without network
the fetch fails with a ValueError that says where to put a copy of the file.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from semipd.trace_csv import TRACE_COLUMNS

CACHE_ENV = "SEMIPD_CACHE_DIR"
DOWNLOAD_TIMEOUT_S = 60.0
"""Seconds without progress after which a download gives up."""

_AZURE_DATA = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data/"


@dataclass(frozen=True)
class PublicTrace:
    """A trace that can be fetched by name."""

    name: str
    url: str
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


PUBLIC_TRACES: dict[str, PublicTrace] = {
    t.name: t for t in (
        PublicTrace("azure-conv-2023", _AZURE_DATA + "AzureLLMInferenceTrace_conv.csv",
                    "Azure LLM inference trace 2023 of a conversation service, 19,366 requests over one hour"),
        PublicTrace("azure-code-2023", _AZURE_DATA + "AzureLLMInferenceTrace_code.csv",
                    "Azure LLM inference trace 2023 of a coding service, one hour"),
    )
}


def cache_dir() -> Path:
    """Where fetched traces live: ``$SEMIPD_CACHE_DIR/traces``, else ``~/.cache/semipd/traces``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "semipd"
    return Path(root).expanduser() / "traces"


def resolve_trace(spec: str | Path) -> Path:
    """The trace file for `spec`: a `PUBLIC_TRACES` name (fetched on first use) or a path."""
    if isinstance(spec, str) and spec in PUBLIC_TRACES:
        return fetch_trace(spec)
    return Path(spec)


def fetch_trace(name: str) -> Path:
    """The cached file of the public trace `name`, downloaded first if it is not cached.

    The download goes to a temporary file that replaces the cached one only once it is complete
    and starts with the trace's header, so an interrupted or wrong download is never cached.
    """
    if name not in PUBLIC_TRACES:
        raise ValueError(f"unknown public trace {name!r}; known: {', '.join(PUBLIC_TRACES)}")
    trace = PUBLIC_TRACES[name]
    path = cache_dir() / trace.filename
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"trace {name}: cannot create the cache directory {path.parent} ({exc.strerror or exc}); "
                         f"set {CACHE_ENV} to a writable directory") from None
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    print(f"{name}: downloading the {trace.description} from {trace.url} to {path}", file=sys.stderr)
    try:
        _fetch(trace.url, partial)
        _check_header(partial, name, trace.url)
        os.replace(partial, path)
    except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors too
        reason = getattr(exc, "reason", None) or exc
        raise ValueError(f"trace {name}: cannot download {trace.url} ({reason}). Without network, fetch that file "
                         f"elsewhere and copy it to {path} (or set {CACHE_ENV}), or pass its path") from None
    finally:
        partial.unlink(missing_ok=True)
    return path


def _fetch(url: str, dest: Path) -> None:
    """Copy the body of `url` into `dest` (any scheme urllib opens, file:// included)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, dest.open("wb") as f:
        shutil.copyfileobj(response, f)


def _check_header(path: Path, name: str, url: str) -> None:
    with path.open("rb") as f:
        first = f.readline(4096).decode("utf-8-sig", errors="replace").strip()
    if [c.strip() for c in first.split(",")][:len(TRACE_COLUMNS)] != list(TRACE_COLUMNS):
        raise ValueError(f"trace {name}: what {url} sent is not the trace (it starts with {first[:80]!r})")
