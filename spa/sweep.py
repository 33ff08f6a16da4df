"""`spa sweep`: prune one model at every (criterion, ratio) setting and measure each result:
parameters and MACs, fidelity to the dense model (spa.compare), realized onnxruntime latency
(spa.latency.measured_ratio) and an optional user metric; then the Pareto front of quality
against cost, written as CSV, JSON and (with matplotlib) a PNG and a self-contained HTML page.

Each setting is one task returning its row (a plain dict): in-process with one worker, in a
local process pool (`concurrent.futures.ProcessPoolExecutor`) with more."""
from __future__ import annotations

import base64
import csv
import html
import importlib
import io
import json
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from spa.errors import SpaError, first_line
from spa.tables import Column, render, right

LATENCY_RUNS = 10
COMPARE_SAMPLES = 16
COLUMNS = ("criterion", "ratio", "params_before", "params_after", "params_ratio", "macs_before", "macs_after",
           "macs_ratio", "cosine", "max_abs", "top1", "latency_ratio", "metric", "pareto_latency", "pareto_macs",
           "seconds", "error")


@dataclass(frozen=True)
class Setting:
    criterion: str
    ratio: float


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one setting (plain values: it crosses a process boundary)."""
    model: str
    setting: Setting
    calib: str | None = None
    metric: str | None = None  # "module:function"
    runs: int = LATENCY_RUNS
    threads: int = 1
    seed: int = 0


def parse_ratios(text: str) -> list[float]:
    """"a:b:step" (a to b inclusive) or a list "0.1,0.3"; every ratio in [0, 1), no repeats."""
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"a range is start:stop:step, got {text!r}")
        start, stop, step = (_float(p) for p in parts)
        if step <= 0:
            raise ValueError(f"the step must be > 0, got {parts[2]}")
        if stop < start:
            raise ValueError(f"the range ends before it starts: {text}")
        count = math.floor((stop - start) / step + 1e-9) + 1
        ratios = [round(start + k * step, 10) for k in range(count)]
    else:
        ratios = [_float(p) for p in text.split(",") if p.strip()]
        if not ratios:
            raise ValueError("no ratios given")
    outside = [r for r in ratios if not 0 <= r < 1]
    if outside:
        raise ValueError(f"every ratio must be in [0, 1), got {outside[0]:g}")
    if len(set(ratios)) != len(ratios):
        raise ValueError(f"a ratio is given twice in {text!r}")
    return ratios


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text.strip()}")
    return value


def parse_criteria(text: str) -> list[str]:
    from spa.criteria import CRITERIA
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in CRITERIA]
    if unknown or not names:
        raise ValueError(f"unknown criterion {unknown[0] if unknown else text!r}; choose from {', '.join(CRITERIA)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a criterion is given twice in {text!r}")
    return names


def load_metric(spec: str) -> Callable[[str], float]:
    """The function `spec` ("module:function") names; SpaError if it cannot be imported."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise SpaError(f"--metric is module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - whatever the user's module raises on import
        raise SpaError(f"--metric: cannot import {module_name}: {first_line(error)}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise SpaError(f"--metric: {module_name} has no function {function_name}")
    return function


def settings(criteria: Sequence[str], ratios: Sequence[float]) -> list[Setting]:
    return [Setting(c, r) for c in criteria for r in ratios]


def run_setting(job: Job) -> dict:
    """Prune `job.model` at one setting into a scratch folder and measure the result. A
    failure of this setting alone is the row's "error"; its measurements are then None."""
    started = time.perf_counter()
    row: dict = {column: None for column in COLUMNS}
    row.update(criterion=job.setting.criterion, ratio=job.setting.ratio, pareto_latency=False, pareto_macs=False)
    try:
        with tempfile.TemporaryDirectory(prefix="spa-sweep-") as folder:
            row.update(_measure(job, Path(folder) / f"{Path(job.model).stem}.pruned.onnx"))
    except SpaError as error:
        row["error"] = str(error)
    except Exception as error:  # noqa: BLE001 - one setting failing must not lose the others
        row["error"] = f"{type(error).__name__}: {first_line(error)}"
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def _measure(job: Job, output: Path) -> dict:
    from spa.api import prune
    from spa.compare import compare
    from spa.io.inputs import make_inputs
    from spa.latency import measured_ratio
    result = prune(job.model, job.setting.ratio, criterion=job.setting.criterion, calib=job.calib,
                   seed=job.seed, output=output, verify=True)
    before, after = result.report["before"], result.report["after"]
    fidelity = compare(job.model, output, calib=job.calib, samples=COMPARE_SAMPLES if job.calib is None else None,
                       seed=job.seed)["outputs"]
    cosines = [o["cosine"] for o in fidelity]
    errors = [o["max_abs"] for o in fidelity]
    top1 = [o["top1"] for o in fidelity if o["top1"] is not None]
    feeds = make_inputs(result.model, seed=job.seed)
    row = {"params_before": before["params"], "params_after": after["params"],
           "params_ratio": _ratio(after["params"], before["params"]),
           "macs_before": before["macs"], "macs_after": after["macs"], "macs_ratio": _ratio(after["macs"], before["macs"]),
           "cosine": None if None in cosines else min(cosines), "max_abs": None if None in errors else max(errors),
           "top1": min(top1) if top1 else None,
           "latency_ratio": measured_ratio(job.model, output, feeds, threads=job.threads, runs=job.runs)}
    if job.metric is not None:
        value = load_metric(job.metric)(str(output))
        try:
            row["metric"] = float(value)
        except (TypeError, ValueError):
            raise SpaError(f"--metric returned {value!r}, not a number") from None
    return row


def _ratio(after, before) -> float | None:
    return after / before if after is not None and before else None


EXECUTORS = ("local", "ray")


def run_sweep(jobs: Sequence[Job], workers: int = 1, on_row: Callable[[dict], None] | None = None,
              executor: str = "local", address: str | None = None) -> list[dict]:
    """One row per job, in the jobs' order; `on_row` is called as each finishes. More than one
    worker: a process pool (spawned, so no onnxruntime state is forked). `executor` "ray":
    each job is a Ray task, on the cluster at `address` (default: a local Ray instance)."""
    if executor == "ray":
        return _run_on_ray(jobs, on_row, address)
    if workers <= 1 or len(jobs) <= 1:
        rows = []
        for job in jobs:
            rows.append(run_setting(job))
            if on_row:
                on_row(rows[-1])
        return rows
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(run_setting, job) for job in jobs]
        try:
            rows = []
            for future in futures:
                rows.append(future.result())
                if on_row:
                    on_row(rows[-1])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return rows


def _run_on_ray(jobs: Sequence[Job], on_row: Callable[[dict], None] | None, address: str | None) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise SpaError("--executor ray needs Ray: pip install 'spa-prune[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(run_setting)
        pending = [task.remote(job) for job in jobs]
        rows = []
        for ref in pending:  # in the jobs' order, as the local pool
            rows.append(ray.get(ref))
            if on_row:
                on_row(rows[-1])
        return rows
    finally:
        if started:
            ray.shutdown()


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the points (cost, quality) no other point beats: none has cost <= and
    quality >= with one of them strictly. Points with a None are on no front. In cost order."""
    valid = [(i, c, q) for i, (c, q) in enumerate(points) if c is not None and q is not None
             and math.isfinite(c) and math.isfinite(q)]
    front = [i for i, c, q in valid
             if not any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for _, c2, q2 in valid)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def quality_of(row: dict, use_metric: bool) -> float | None:
    return row["metric"] if use_metric else row["cosine"]


def mark_pareto(rows: list[dict], use_metric: bool) -> dict[str, list[int]]:
    """Set each row's pareto_latency / pareto_macs; return the fronts as row indices."""
    fronts = {}
    for cost in ("latency", "macs"):
        front = pareto_front([(row[f"{cost}_ratio"], quality_of(row, use_metric)) for row in rows])
        for index, row in enumerate(rows):
            row[f"pareto_{cost}"] = index in front
        fronts[cost] = front
    return fronts


def sweep_document(model: str, rows: list[dict], fronts: dict[str, list[int]], use_metric: bool, metric: str | None,
                   calib: str | None, runs: int, threads: int) -> dict:
    return {"model": model, "calib": calib, "quality": f"metric {metric}" if use_metric else "cosine",
            "latency_runs": runs, "threads": threads, "rows": rows, "pareto": fronts}


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: "" if row.get(c) is None else row[c] for c in COLUMNS} for row in rows)


def write_json(document: dict, path: Path) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_png(rows: list[dict], use_metric: bool, label: str, title: str) -> bytes:
    """Quality against realized latency ratio and against MACs ratio, one marker per
    criterion, the Pareto front joined and ringed."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=90, sharey=True)
    markers = "osD^v<>pP*X"
    criteria = list(dict.fromkeys(row["criterion"] for row in rows))
    for axis, cost, xlabel in zip(axes, ("latency", "macs"), ("realized latency ratio (onnxruntime)", "MACs ratio")):
        for k, criterion in enumerate(criteria):
            points = [(r[f"{cost}_ratio"], quality_of(r, use_metric), r["ratio"]) for r in rows
                      if r["criterion"] == criterion and r[f"{cost}_ratio"] is not None
                      and quality_of(r, use_metric) is not None]
            if not points:
                continue
            axis.scatter([p[0] for p in points], [p[1] for p in points], marker=markers[k % len(markers)],
                         label=criterion, zorder=3)
            for x, y, ratio in points:
                axis.annotate(f"{ratio:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = [r for r in rows if r[f"pareto_{cost}"]]
        front.sort(key=lambda r: r[f"{cost}_ratio"])
        if front:
            xs, ys = [r[f"{cost}_ratio"] for r in front], [quality_of(r, use_metric) for r in front]
            axis.step(xs, ys, where="post", color="grey", linewidth=1, zorder=2, label="Pareto front")
            axis.scatter(xs, ys, s=160, facecolors="none", edgecolors="red", linewidths=1.2, zorder=4)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def html_page(png: bytes, rows: list[dict], title: str) -> str:
    """One file: the plot embedded as base64, then the table."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in COLUMNS) + "</tr>"
                     for row in rows)
    image = base64.b64encode(png).decode()
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<img alt=\"sweep plot\" src=\"data:image/png;base64,{image}\">\n"
            f"<table>\n<tr>{head}</tr>\n{body}\n</table>\n</body></html>\n")


def write_outputs(document: dict, folder: Path, use_metric: bool, metric: str | None) -> list[Path]:
    """sweep.csv and sweep.json, and with matplotlib sweep.png and sweep.html. Returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = document["rows"]
    written = [folder / "sweep.csv", folder / "sweep.json"]
    write_csv(rows, written[0])
    write_json(document, written[1])
    if has_matplotlib():
        title = f"spa sweep {Path(document['model']).name}"
        png = plot_png(rows, use_metric, f"metric ({metric})" if use_metric else "cosine to dense outputs", title)
        (folder / "sweep.png").write_bytes(png)
        (folder / "sweep.html").write_text(html_page(png, rows, title))
        written += [folder / "sweep.png", folder / "sweep.html"]
    return written


def format_table(rows: list[dict], use_metric: bool) -> str:
    columns = [Column("criterion"), right("ratio"), right("params"), right("MACs"), right("latency"), right("cosine"),
               right("top-1"), *((right("metric"),) if use_metric else ()), Column("pareto")]
    cells = []
    for row in rows:
        pareto = ",".join(cost for cost in ("latency", "macs") if row[f"pareto_{cost}"]) or "-"
        if row["error"]:
            cells.append((row["criterion"], f"{row['ratio']:g}", f"error: {row['error']}"))
            continue
        cells.append((row["criterion"], f"{row['ratio']:g}", _share(row["params_ratio"]), _share(row["macs_ratio"]),
                      _share(row["latency_ratio"]), "-" if row["cosine"] is None else f"{row['cosine']:.4f}",
                      "-" if row["top1"] is None else f"{100 * row['top1']:.1f}%",
                      *((_cell(row["metric"]),) if use_metric else ()), pareto))
    return render(columns, cells, title="one row per setting; params, MACs, latency: share of the original")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
