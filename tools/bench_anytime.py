"""Any time: accuracy of the trained digits models pruned after training (with and without fine-tuning)
and pruned before training (then trained from scratch), all through spa.finetune.

For each model (digits_resnet_bn, digits_mobilenet, digits_transformer) and ratio (0.5, 0.7) it prints
the test accuracy (400 held-out digits, onnxruntime or the converted module in eval mode):

- dense: the trained model (models/trained/NAME.onnx);
- pruned: spa with criterion obs and the calibration split (200 digits), no fine-tuning;
- fine-tuned 1 / 3 epochs: the pruned model converted (spa.finetune.to_torch) and trained on the
  1197-digit train split with examples/finetune.py's default Recipe, the same for every model (AdamW
  without weight decay, batch 32, lr 5e-3 after a linear warm-up over 0.3 epoch, then per-step cosine
  decay to 0 over the run; a 1-epoch run and a 3-epoch run, each with its own schedule), without and
  with distillation from the dense model (0.9 of the loss is T^2 KL to its outputs at T=4);
- fine-tuned as long as dense + KD: the same recipe with distillation for as many epochs as the dense
  model was trained (train_digits.RECIPES: 20 / 30 / 60), which shows what it takes where 3 epochs
  do not reach the goal;
- pruned before training: the same architecture freshly initialized (tools/train_digits.py's class,
  seed 0), exported to ONNX with BatchNorm kept, pruned by spa at the ratio with its default criterion
  (no data), converted and trained from scratch with the dense model's own recipe (train_digits.RECIPES:
  AdamW, per-step cosine lr, label smoothing 0.1, batch 64, the same epochs: 20 / 30 / 60);
- with --control: the dense architecture trained from scratch through the same path (ratio 0), which
  tells what the path itself costs against the dense model trained in torch.

The fine-tuned model of every cell is written back with spa.finetune.export_onnx and its accuracy
checked in onnxruntime against the module's. The markdown table replaces this tool's section of --out.

Needs torch, scikit-learn (the train split) and spa's finetune extra, e.g. in one environment:
  python -m venv ~/.cache/spa/venvs/anytime && ~/.cache/spa/venvs/anytime/bin/pip install \\
      torch==2.14.1 torchvision==0.29.1 scikit-learn -e ".[finetune]"
  ~/.cache/spa/venvs/anytime/bin/python tools/bench_anytime.py --control
About 8 minutes on one thread.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import torch  # noqa: E402  (tool-time dependencies, after the path set-up)
import train_digits  # noqa: E402  tools/ is on sys.path when run as a script
from finetune import Recipe, accuracy, train  # noqa: E402  examples/finetune.py

from spa.api import prune  # noqa: E402
from spa.finetune import check_equal, export_onnx, to_torch  # noqa: E402

TRAINED = ROOT / "models" / "trained"
MODELS = ("digits_resnet_bn", "digits_mobilenet", "digits_transformer")
RECIPE_OF = {"digits_resnet_bn": "digits_resnet", "digits_mobilenet": "digits_mobilenet",
             "digits_transformer": "digits_transformer"}
RATIOS = (0.5, 0.7)
FINETUNE = Recipe()  # examples/finetune.py's default recipe; the runs below set epochs and distill
READ_AT = (1, 3)  # epochs: one run each
GOAL = 1.0  # points below dense, at the top ratio, after fine-tuning
SECTION = "bench_anytime"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def datasets() -> dict[str, dict[str, train_digits.Split]]:
    """train_digits' split and preprocessing, checked against the committed digits_data.npz."""
    raw = train_digits.split_digits()
    data = {"cnn": train_digits.normalised(raw, train_digits.upsample),
            "tokens": train_digits.normalised(raw, train_digits.to_tokens)}
    committed = np.load(TRAINED / "digits_data.npz")
    for layout, suffix in (("cnn", ""), ("tokens", "_tokens")):
        for split in ("calib", "test"):
            if not np.allclose(data[layout][split].x, committed[f"{split}_x{suffix}"], atol=1e-6):
                raise SystemExit(f"train_digits' {split} split differs from digits_data.npz: rerun train_digits.py")
    return data


def finetuned(pruned: Path, dense: Path, data: dict[str, train_digits.Split], distill: bool, epochs: int,
              workdir: Path) -> float:
    """Test accuracy after one fine-tuning run of `epochs` (its lr schedule spans those epochs), checked
    in onnxruntime on the file export_onnx writes."""
    torch.manual_seed(0)
    module = to_torch(pruned)
    check_equal(module, pruned, {"input": data["calib"].x[:64]}, atol=1e-5)
    teacher = to_torch(dense) if distill else None
    recipe = dataclasses.replace(FINETUNE, epochs=epochs, distill=distill)
    train(module, data["train"].x, data["train"].y, recipe, teacher=teacher)
    score = accuracy(module, data["test"].x, data["test"].y)
    written = export_onnx(module, workdir / f"{pruned.stem}_ft{epochs}{'_kd' if distill else ''}.onnx")
    in_ort = accuracy(written, data["test"].x, data["test"].y)
    if abs(in_ort - score) > 0.5:
        raise SystemExit(f"{written}: onnxruntime accuracy {in_ort} differs from torch's {score}")
    return score


def from_scratch(name: str, ratio: float, data: dict[str, train_digits.Split], workdir: Path) -> tuple[float, float]:
    """(test accuracy, MACs after / before) of NAME's architecture pruned before training at `ratio`
    and trained with the dense recipe."""
    recipe = train_digits.RECIPES[RECIPE_OF[name]]
    train_digits.seed_everything()
    model = recipe.build().eval()
    fresh = workdir / f"{name}_fresh.onnx"
    train_digits.export(model, torch.from_numpy(data["test"].x[:1]), fresh, dynamic=True, keep_bn=True)
    small = workdir / f"{name}_fresh_{ratio}.onnx"
    macs = 1.0
    if ratio > 0:
        result = prune(fresh, ratio, output=small)
        macs = result.report["after"]["macs"] / result.report["before"]["macs"]
    else:
        small = fresh
    module = to_torch(small)
    check_equal(module, small, {"input": data["calib"].x[:64]}, atol=1e-5)
    torch.manual_seed(train_digits.SEED)
    train(module, data["train"].x, data["train"].y,
          Recipe(epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay, batch=train_digits.BATCH,
                 cosine=True, warmup=0.0, label_smoothing=0.1, seed=train_digits.SEED))
    return accuracy(module, data["test"].x, data["test"].y), macs


def replace_section(path: Path, text: str) -> None:
    """Put `text` between this tool's markers in `path`, keeping the rest of the file."""
    begin, end = f"<!-- {SECTION} -->", f"<!-- /{SECTION} -->"
    old = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    parser.add_argument("--control", action="store_true", help="also train the dense architecture through spa.finetune")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "anytime.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    ratios = [float(r) for r in args.ratios.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="spa-anytime-"))
    digits = datasets()
    rows, results = [], []
    start = time.perf_counter()
    for name in args.models.split(","):
        data = digits["tokens" if "transformer" in name else "cnn"]
        dense = TRAINED / f"{name}.onnx"
        dense_acc = accuracy(dense, data["test"].x, data["test"].y)
        calib = workdir / f"{name}_calib.npz"
        np.savez(calib, input=data["calib"].x)
        control = from_scratch(name, 0.0, data, workdir)[0] if args.control else None
        for ratio in ratios:
            log(f"{name} {ratio}")
            pruned = workdir / f"{name}_{ratio}.onnx"
            result = prune(dense, ratio, criterion="obs", calib=calib, output=pruned)
            macs = result.report["after"]["macs"] / result.report["before"]["macs"]
            row = {"model": name, "ratio": ratio, "macs": macs, "dense": dense_acc,
                   "pruned": accuracy(pruned, data["test"].x, data["test"].y)}
            for distill in (False, True):
                for epoch in READ_AT:
                    row[f"ft{epoch}{'_kd' if distill else ''}"] = finetuned(pruned, dense, data, distill, epoch, workdir)
            row["long_epochs"] = train_digits.RECIPES[RECIPE_OF[name]].epochs
            row["long_kd"] = finetuned(pruned, dense, data, True, row["long_epochs"], workdir)
            row["scratch"], row["scratch_macs"] = from_scratch(name, ratio, data, workdir)
            row["control"] = control
            log(f"  {row}")
            results.append(row)
    seconds = time.perf_counter() - start
    header = ("| model | ratio | MACs | dense | pruned (obs, calib) | ft 1 ep | ft 3 ep | ft 1 ep + KD | ft 3 ep + KD "
              "| ft + KD as long as dense (epochs) | pruned before training (MACs) |"
              + (" dense via spa.finetune |" if args.control else ""))
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        cells = [r["model"], f"{r['ratio']:.1f}", f"{r['macs']:.2f}", f"{r['dense']:.2f}", f"{r['pruned']:.2f}",
                 *(f"{r[key]:.2f}" for key in ("ft1", "ft3", "ft1_kd", "ft3_kd")),
                 f"{r['long_kd']:.2f} ({r['long_epochs']})",
                 f"{r['scratch']:.2f} ({r['scratch_macs']:.2f})"]
        if args.control:
            cells.append(f"{r['control']:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    top = max(ratios)
    verdicts = []
    for r in (r for r in results if r["ratio"] == top):
        best = max(r["ft3"], r["ft3_kd"])
        verdicts.append(f"{r['model']}: best 3-epoch fine-tune {best:.2f} vs dense {r['dense']:.2f} "
                        f"({'within' if r['dense'] - best <= GOAL else 'NOT within'} {GOAL:g} point; "
                        f"{r['long_kd']:.2f} after {r['long_epochs']} epochs with KD, "
                        f"{'within' if r['dense'] - r['long_kd'] <= GOAL else 'NOT within'})")
    text = "\n".join([
        "## Any time: fine-tuning after pruning, and pruning before training (tools/bench_anytime.py)",
        "",
        "Test accuracy (%) on the 400 held-out digits. Fine-tuning: examples/finetune.py's default recipe, "
        f"the same for every model: AdamW, batch {FINETUNE.batch}, lr {FINETUNE.lr:g} after a linear warm-up "
        f"over {FINETUNE.warmup:g} epoch, then per-step cosine decay to 0 over the run (the 1-epoch and "
        "3-epoch columns are separate runs); KD: distillation from the dense model (weight "
        f"{FINETUNE.distill_weight}, T={FINETUNE.temperature:g}). \"As long as dense\": the same recipe with KD "
        "for as many epochs as the dense model was trained. Pruned before training: the freshly initialized "
        "architecture pruned by spa (default criterion, no data), trained from scratch with the dense "
        "model's recipe and epochs. Dense via spa.finetune: the dense architecture trained that way. "
        "MACs: after / before.",
        "",
        *rows,
        "",
        f"Goal at ratio {top:g} (fine-tuning within {GOAL:g} point of dense): " + "; ".join(verdicts) + ".",
        "",
        f"`python tools/bench_anytime.py --models {args.models} --ratios {args.ratios}"
        f"{' --control' if args.control else ''} --threads {args.threads}`: {seconds / 60:.1f} min "
        f"(torch {torch.__version__}).",
    ])
    print(text)
    replace_section(args.out, text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
