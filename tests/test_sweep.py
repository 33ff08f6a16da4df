"""`spa sweep`: the table of settings, the Pareto front, the writers, --metric, argument errors."""
from __future__ import annotations

import csv
import json
import sys

import pytest
from conftest import MODELS

from spa.cli import EXIT_USAGE, main
from spa.sweep import (COLUMNS, Job, Setting, mark_pareto, pareto_front, parse_criteria, parse_ratios, run_sweep,
                       settings)

MODEL = MODELS / "resnet_basic.onnx"
TIMINGS = {"latency_ratio", "seconds"}  # differ between runs; everything else is deterministic


def _jobs(metric: str | None = None) -> list[Job]:
    return [Job(str(MODEL), s, metric=metric, runs=3) for s in settings(["l2", "obs"], [0.3, 0.6])]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return run_sweep(_jobs(), workers=1)


def test_rows_cover_every_setting_with_every_column(rows):
    assert [(r["criterion"], r["ratio"]) for r in rows] == [("l2", 0.3), ("l2", 0.6), ("obs", 0.3), ("obs", 0.6)]
    for row in rows:
        assert set(row) == set(COLUMNS)
        assert row["error"] is None
        assert row["params_after"] < row["params_before"] and row["macs_after"] < row["macs_before"]
        assert row["macs_ratio"] == pytest.approx(row["macs_after"] / row["macs_before"])
        assert 0 < row["latency_ratio"] and 0 < row["cosine"] <= 1 + 1e-9 and row["max_abs"] > 0
    by = {(r["criterion"], r["ratio"]): r for r in rows}
    assert by["l2", 0.6]["macs_ratio"] < by["l2", 0.3]["macs_ratio"]
    assert by["obs", 0.6]["cosine"] > by["l2", 0.6]["cosine"]  # obs repairs what it removes


def test_two_workers_give_the_same_rows(rows):
    pooled = run_sweep(_jobs(), workers=2)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rs]  # noqa: E731
    assert strip(pooled) == strip(rows)


def test_ray_tasks_give_the_same_rows_as_the_local_pool(rows):
    """A local Ray instance runs each setting as a task; the rows are the local ones."""
    pytest.importorskip("ray")
    on_ray = run_sweep(_jobs(), executor="ray")
    assert len(on_ray) == len(rows)
    for remote, local in zip(on_ray, rows):  # Ray workers run BLAS on one thread: floats may differ in rounding
        assert remote.keys() == local.keys()
        for key in remote.keys() - TIMINGS:
            if isinstance(local[key], float):
                assert remote[key] == pytest.approx(local[key], rel=1e-3, abs=1e-6), key
            else:
                assert remote[key] == local[key], key


def test_pareto_front_on_a_hand_made_list():
    points = [(1.0, 1.0), (0.8, 0.99), (0.8, 0.95), (0.6, 0.99), (0.5, 0.7), (0.5, 0.7), (0.9, 0.5),
              (None, 1.0), (0.1, None), (0.55, float("nan"))]
    # (0.8, 0.99) is beaten by (0.6, 0.99); (0.8, 0.95) too; (0.9, 0.5) by all; ties both stay
    assert pareto_front(points) == [4, 5, 3, 0]
    assert pareto_front([]) == []
    rows = [{"latency_ratio": c, "macs_ratio": 1 - c, "cosine": q, "metric": -q} for c, q in [(0.5, 0.9), (0.7, 0.8)]]
    fronts = mark_pareto(rows, use_metric=False)
    assert fronts == {"latency": [0], "macs": [1, 0]} and rows[1]["pareto_macs"] and not rows[1]["pareto_latency"]
    assert mark_pareto(rows, use_metric=True)["latency"] == [0, 1]  # metric = -cosine: now a trade-off


def test_cli_writes_csv_json_and_prints_json(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", str(MODEL), "--ratios", "0.3:0.6:0.3", "--criteria", "l2", "--out", str(out),
                 "--runs", "3", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "sweep.json").read_text())
    assert [r["ratio"] for r in printed["rows"]] == [0.3, 0.6] and printed["quality"] == "cosine"
    assert set(printed["pareto"]) == {"latency", "macs"}
    with (out / "sweep.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == COLUMNS and [float(r["ratio"]) for r in table] == [0.3, 0.6]
    assert float(table[1]["macs_after"]) == printed["rows"][1]["macs_after"]


def test_cli_writes_png_and_html_with_matplotlib(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert main(["sweep", str(MODEL), "--ratios", "0.3,0.6", "--out", str(out), "--runs", "3"]) == 0
    assert "Pareto" not in capsys.readouterr().err
    png = (out / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 100_000
    page = (out / "sweep.html").read_text()
    assert "data:image/png;base64," in page and page.count("<tr>") == 3 and "<td>l2</td>" in page


def test_without_matplotlib_only_csv_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "out"
    assert main(["sweep", str(MODEL), "--ratios", "0.3", "--out", str(out), "--runs", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.json"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("spa: matplotlib")]
    assert len(lines) == 1


def test_metric_is_called_with_each_pruned_model(tmp_path, capsys, monkeypatch):
    log = tmp_path / "calls.txt"
    (tmp_path / "my_metric.py").write_text(
        "import onnx, os\n"
        "def score(path):\n"
        f"    open({str(log)!r}, 'a').write(path + '\\n')\n"
        "    model = onnx.load(path)\n"
        "    return -sum(len(i.raw_data) for i in model.graph.initializer) / 1e6\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert main(["sweep", str(MODEL), "--ratios", "0.3,0.6", "--out", str(out), "--runs", "3",
                 "--metric", "my_metric:score", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and all(c.endswith(".onnx") for c in calls)
    metrics = [r["metric"] for r in document["rows"]]
    assert all(isinstance(m, float) for m in metrics) and metrics[1] > metrics[0]  # fewer weights: higher
    assert document["quality"] == "metric my_metric:score"
    assert document["pareto"]["macs"] == [1]  # smaller and higher metric: beats the other


@pytest.mark.parametrize("text, expected", [
    ("0.1:0.7:0.1", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    ("0.1:0.7:0.2", [0.1, 0.3, 0.5, 0.7]),
    ("0.1:0.6:0.2", [0.1, 0.3, 0.5]),
    ("0.5:0.5:0.1", [0.5]),
    ("0.1,0.3", [0.1, 0.3]),
    (" 0.2 , 0 ", [0.2, 0.0]),
])
def test_ratio_ranges_and_lists(text, expected):
    assert parse_ratios(text) == expected


@pytest.mark.parametrize("text, message", [
    ("0.1:0.7", "start:stop:step"), ("0.1:0.7:0", "step must be > 0"), ("0.7:0.1:0.1", "ends before"),
    ("0.1:1.0:0.3", "[0, 1)"), ("x", "not a number"), ("", "no ratios"), ("0.1,0.1", "twice"), ("nan", "finite"),
])
def test_bad_ratios(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        parse_ratios(text)


def test_criteria_parse():
    assert parse_criteria("l2, obs") == ["l2", "obs"]
    with pytest.raises(ValueError, match="unknown criterion 'nope'"):
        parse_criteria("l2,nope")


@pytest.mark.parametrize("argv, expected", [
    (["--ratios", "0.1:0.7:-0.1"], "argument --ratios: the step must be > 0"),
    (["--criteria", "l3"], "argument --criteria: unknown criterion 'l3'"),
    (["--workers", "0"], "argument --workers: must be a whole number >= 1"),
    (["--metric", "nocolon"], "--metric is module:function"),
    (["--metric", "no_such_module_xyz:f"], "--metric: cannot import no_such_module_xyz"),
    (["--metric", "json:no_such_function"], "--metric: json has no function no_such_function"),
])
def test_bad_arguments_are_one_line(argv, expected, capsys, tmp_path):
    code = main(["sweep", str(MODEL), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert code in (EXIT_USAGE, 1) and err.count("\n") == 0 and err.startswith("spa: error:") and expected in err
    assert not (tmp_path / "out").exists()


def test_bad_model_is_one_error(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["sweep", str(bad), "--ratios", "0.3", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("spa: error:") and "\n" not in err


def test_a_failing_setting_is_its_rows_error():
    row = run_sweep([Job(str(MODEL), Setting("l2", 0.3), metric="json:dumps", runs=2)])[0]
    assert row["error"] and "not a number" in row["error"] and row["criterion"] == "l2" and row["latency_ratio"] is None
