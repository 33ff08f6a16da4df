"""The tables spa prints (spa.tables): plain aligned text in a pipe, rich's drawing on a terminal."""
import io
import json
import re

import pytest
from conftest import MODELS

import spa
from spa.cli import main
from spa.report import inspect_table, prune_summary
from spa.sweep import format_table
from spa.tables import Column, Heading, render, right

ESCAPE = re.compile(r"\x1b\[")
COLUMNS = [Column("name"), right("size"), Column("note")]
ROWS = [Heading("block1"), ("a", "7", "w[i] shape"), ("bb", "128", "x"), Heading("block2"), ("c", "5", "")]


class _Terminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_plain_columns_are_aligned_two_spaces_apart_without_title_or_escapes():
    text = render(COLUMNS, ROWS, title="a title", terminal=False)
    assert text.splitlines() == ["name  size  note",
                                 "block1",
                                 "a        7  w[i] shape",
                                 "bb     128  x",
                                 "block2",
                                 "c        5"]
    assert not ESCAPE.search(text) and text.isascii()


def test_plain_never_wraps_and_a_short_row_runs_on():
    long = "y" * 500
    text = render(COLUMNS, [("a", "1", long), ("error: " + long,)], terminal=False)
    assert text.splitlines() == ["name  size  note", f"a        1  {long}", "error: " + long]


def test_a_terminal_gets_rich_drawing():
    text = render(COLUMNS, ROWS, title="a title", terminal=True)
    assert ESCAPE.search(text) and "─" in text and "a title" in text
    assert "w[i] shape" in text  # a cell is text, not rich markup ([i]: italic)


def test_stdout_decides(monkeypatch):
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert "─" in render(COLUMNS, ROWS)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert render(COLUMNS, ROWS) == render(COLUMNS, ROWS, terminal=False)


def test_inspect_in_a_pipe_is_plain_and_parses(resnet_copy, capsys):
    assert main(["inspect", str(resnet_copy)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert not ESCAPE.search(out) and str(resnet_copy) not in out  # no escapes, no title
    assert lines[0].split() == ["group", "kind", "size", "prunable", "exact", "layer:", "what", "/", "why", "kept",
                                "whole"]
    assert lines[1].split()[:5] == ["0", "channels", "16", "yes", "yes"]
    assert lines[9].split()[:5] == ["8", "mlp", "10", "no", "yes"] and lines[-1] == "9 groups, 8 prunable and exact"


def test_inspect_on_a_terminal_is_drawn_by_rich(resnet_copy, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert main(["inspect", str(resnet_copy)]) == 0
    out = terminal.getvalue()
    assert ESCAPE.search(out) and "─" in out and str(resnet_copy) in out  # the title names the model
    assert out.splitlines()[-1] == "9 groups, 8 prunable and exact"


def test_block_headings_are_lines_in_a_pipe_and_bold_rows_on_a_terminal(monkeypatch):
    analysis = spa.inspect(str(MODELS / "transformers" / "bert_tiny.onnx"))
    assert "model.bert.pooler" in inspect_table(analysis).splitlines()
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert "\x1b[1mmodel.bert.pooler" in inspect_table(analysis)


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_json_and_quiet_stay_plain_on_a_terminal(resnet_copy, tmp_path, monkeypatch, flag):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert main(["prune", str(resnet_copy), "--ratio", "0.4", "-o", str(tmp_path / "out.onnx"), flag]) == 0
    out = terminal.getvalue()
    if flag == "--quiet":
        assert out == ""
    else:
        assert json.loads(out)["after"]["params"] > 0 and not ESCAPE.search(out)


def _report(latency: dict | None = None) -> dict:
    before = {"params": 1000, "macs": 50000, "size_bytes": 4096, "nodes": 10}
    after = {"params": 400, "macs": 20000, "size_bytes": 2048, "nodes": 10}
    return {"before": before, "after": after, "latency": latency, "groups": [], "fidelity": None, "steps": []}


def test_prune_summary_rows_and_the_latency_note():
    lines = prune_summary(_report({"original_ms": 1.25, "realized_ratio": 0.5, "predicted_ratio": 0.45,
                                   "threads": 2})).splitlines()
    assert [line.rsplit(None, 3) for line in lines[1:6]] == [
        ["params", "1,000", "400", "0.400"], ["MACs", "50,000", "20,000", "0.400"],
        ["size (KiB)", "4", "2", "0.500"], ["nodes", "10", "10", "1.000"], ["latency (ms)", "1.250", "-", "0.500"]]
    assert lines[0].split() == ["before", "after", "after/before"]
    assert lines[6] == "latency: measured, 2 thread(s); predicted after/before 0.450"
    assert lines[7].startswith("groups: 0 pruned")


def test_sweep_error_row_runs_on_past_the_columns():
    ok = {"criterion": "l2", "ratio": 0.3, "params_ratio": 0.5, "macs_ratio": 0.6, "latency_ratio": 0.7,
          "cosine": 0.99, "top1": 1.0, "pareto_latency": True, "pareto_macs": False, "error": None}
    failed = {**ok, "ratio": 0.6, "error": "cannot prune: a very long reason"}
    lines = format_table([ok, failed], use_metric=False).splitlines()
    assert lines[0].split() == ["criterion", "ratio", "params", "MACs", "latency", "cosine", "top-1", "pareto"]
    assert lines[1].split() == ["l2", "0.3", "50.0%", "60.0%", "70.0%", "0.9900", "100.0%", "latency"]
    assert lines[2].split(None, 2) == ["l2", "0.6", "error: cannot prune: a very long reason"]
