"""Trace CSV reading: spreadsheet exports are accepted, and every malformed row is reported
with its line number and field (no IndexError, no silent fix-up of negative counts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from semipd.trace_csv import read_azure_trace_csv
from semipd.workload import load_azure_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
ROWS = ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:50.9951690,396,0",
        "2023-11-16 18:15:51.2224670,8879,55"]


def _write(tmp_path: Path, text: str | bytes, name: str = "t.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, newline="")
    else:
        path.write_bytes(text)
    return path


def _lines(*rows: str, header: str = HEADER, end: str = "\n") -> str:
    return end.join([header, *rows]) + end


def test_spreadsheet_export_with_bom_and_crlf_reads_like_the_plain_file(tmp_path: Path) -> None:
    plain = load_azure_trace(_write(tmp_path, _lines(*ROWS), "plain.csv"))
    excel = _write(tmp_path, b"\xef\xbb\xbf" + _lines(*ROWS, end="\r\n").encode(), "excel.csv")
    assert load_azure_trace(excel) == plain
    assert [r.input_len for r in plain] == [374, 396, 8879]


def test_blank_rows_extra_columns_and_spaces_are_accepted(tmp_path: Path) -> None:
    text = _lines(" 2023-11-16 18:15:46.6805900 , 374 ,44,x", "", ",,", "2023-11-16 18:15:47,5,6,y",
                  header="TIMESTAMP, ContextTokens ,GeneratedTokens,Note")
    rows = read_azure_trace_csv(_write(tmp_path, text))
    assert rows.input_lens.tolist() == [374, 5] and rows.output_lens.tolist() == [44, 6]


@pytest.mark.parametrize(("row", "line", "words"), [
    ("2023-11-16 18:15:52,17", 5, "expected 3 fields"),  # ragged: was an IndexError
    ("2023-11-16 18:15:52", 5, "expected 3 fields"),
    ("2023-11-16 18:15:52,12.5,3", 5, "ContextTokens must be a whole number"),
    ("2023-11-16 18:15:52,12,many", 5, "GeneratedTokens must be a whole number"),
    ("2023-11-16 18:15:52,-3,4", 5, "ContextTokens must be >= 0, got -3"),  # was silently made 1
    ("2023-11-16 18:15:52,3,-4", 5, "GeneratedTokens must be >= 0, got -4"),
    ("yesterday,3,4", 5, "TIMESTAMP"),
    (",3,4", 5, "TIMESTAMP"),
    ("NaT,3,4", 5, "TIMESTAMP"),
    ("2023-11-16 18:15:52,99999999999999999999999,4", 5, "ContextTokens is too large"),
])
def test_malformed_rows_name_the_line_and_field(tmp_path: Path, row: str, line: int, words: str) -> None:
    path = _write(tmp_path, _lines(*ROWS[:2], "", row, ROWS[2]))  # the blank line 4 still counts
    with pytest.raises(ValueError, match=f"^{re.escape(f'trace {path}, line {line}: {words}')}"):
        load_azure_trace(path)


def test_file_level_errors_read_cleanly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^trace file not found: "):
        load_azure_trace(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="^trace .* is not an Azure LLM trace: .*its first line has nothing"):
        load_azure_trace(_write(tmp_path, ""))
    with pytest.raises(ValueError, match="GeneratedTokens; its first line has TIMESTAMP, ContextTokens$"):
        load_azure_trace(_write(tmp_path, "TIMESTAMP,ContextTokens\n1,2\n"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_azure_trace(_write(tmp_path, _lines(*ROWS).encode("utf-16")))
    with pytest.raises(ValueError, match="line 2"):
        load_azure_trace(_write(tmp_path, _lines('2023-11-16 18:15:52,"3\x00",4')))
    assert load_azure_trace(_write(tmp_path, _lines())) == []
