"""Fine-tune a pruned ONNX classifier (or train a model pruned before training) in PyTorch, then
write it back to ONNX.

    pip install "spa-prune[finetune]"
    # after training: prune with data, fine-tune 3 epochs, distil from the dense model
    python examples/finetune.py dense.onnx --ratio 0.7 --criterion obs --calib calib.npz \\
        --train train.npz --test test.npz --epochs 3 --distill --out finetuned.onnx
    # before training: prune a freshly initialized export, then train the smaller model from scratch
    spa prune fresh.onnx --ratio 0.5 -o small.onnx
    python examples/finetune.py small.onnx --train train.npz --test test.npz --epochs 20 --lr 3e-3 \\
        --batch 64 --warmup 0 --weight-decay 1e-4 --label-smoothing 0.1 --out trained.onnx

train.npz / test.npz hold `x` (the model's single input, preprocessed as the model expects) and `y`
(int class labels); the model's single output is the logits. Steps:

1. with --ratio or --target-macs, prune MODEL with spa (otherwise MODEL is trained as it is);
2. convert it with spa.finetune.to_torch and check the module against onnxruntime (atol 1e-5);
3. train with `Recipe`'s defaults unless told otherwise: AdamW (no weight decay), lr 5e-3 reached
   by a linear warm-up over the first 0.3 epoch (--warmup) and then decayed to 0 per step along a
   cosine over the run (--no-cosine: constant), cross-entropy, batches of 32 in a seeded order; with
   --distill, 0.9 of the loss (--distill-weight) is T^2 times the KL divergence to the dense model's
   outputs softened at T=4 (--temperature; the dense model is MODEL, or --teacher). The same recipe
   serves every digits model in tools/bench_anytime.py; it was chosen there, on ratio 0.7, among
   constant/cosine lr 1e-3..2e-2, batches 8..64, warm-up 0..0.5 epoch, label smoothing, weight
   decay 1e-4 and 5e-2, distillation weight 0.3..1 and T 1..8;
4. write the trained weights back into the ONNX graph (spa.finetune.export_onnx), check the file in
   onnxruntime against the module, and print the test accuracy after each epoch.

The functions are importable (tools/bench_anytime.py uses them): `train`, `accuracy`, `Recipe`.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from spa.api import prune
from spa.finetune import check_equal, export_onnx, to_torch


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning recipe for every model (tools/bench_anytime.py does not tune it per model)."""
    epochs: int = 3
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch: int = 32
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.9  # loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || student)
    seed: int = 0
    cosine: bool = True  # per-step cosine decay to 0 over the run (after the warm-up); False: constant lr
    label_smoothing: float = 0.0
    warmup: float = 0.3  # epochs of linear lr warm-up from 0 (then cosine or constant)


def train(module, x: np.ndarray, y: np.ndarray, recipe: Recipe, teacher=None,
          after_epoch: Callable[[int], None] | None = None) -> None:
    """Train `module` (a torch.nn.Module taking x's batches) on (x, y); leaves it in eval mode.
    `teacher`: a module whose outputs the student is distilled towards (recipe.distill)."""
    import torch
    import torch.nn.functional as F

    inputs, labels = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * -(-len(inputs) // recipe.batch)
    warm = round(recipe.warmup * -(-len(inputs) // recipe.batch))
    if warm > 0:
        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))) if recipe.cosine else 1.0
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    else:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if recipe.cosine else None
    order = torch.Generator().manual_seed(recipe.seed)
    if teacher is not None:
        teacher.eval()
    for epoch in range(1, recipe.epochs + 1):
        module.train()
        for index in torch.randperm(len(inputs), generator=order).split(recipe.batch):
            logits = module(inputs[index])
            loss = F.cross_entropy(logits, labels[index], label_smoothing=recipe.label_smoothing)
            if recipe.distill:
                with torch.no_grad():
                    target = F.softmax(teacher(inputs[index]) / recipe.temperature, dim=1)
                soft = F.kl_div(F.log_softmax(logits / recipe.temperature, dim=1), target, reduction="batchmean")
                loss = (1 - recipe.distill_weight) * loss + recipe.distill_weight * recipe.temperature ** 2 * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        module.eval()
        if after_epoch is not None:
            after_epoch(epoch)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy in percent: of a torch module (eval mode), or of an ONNX file in onnxruntime."""
    if isinstance(model, (str, Path)):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    else:
        import torch
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return 100.0 * float(np.mean(logits.argmax(axis=1) == y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="the ONNX model to train (pruned already, or pruned first "
                                                 "with --ratio / --target-macs)")
    parser.add_argument("--train", type=Path, required=True, help=".npz with x and y")
    parser.add_argument("--test", type=Path, help=".npz with x and y: accuracy after each epoch")
    parser.add_argument("--out", type=Path, required=True, help="the trained model, ONNX")
    parser.add_argument("--ratio", type=float, help="prune MODEL first: spa's --ratio")
    parser.add_argument("--target-macs", type=float, help="prune MODEL first: spa's --target-macs")
    parser.add_argument("--criterion", default=None, help="spa's --criterion (default: spa's)")
    parser.add_argument("--calib", type=Path, help="spa's --calib")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--weight-decay", type=float, default=Recipe.weight_decay)
    parser.add_argument("--batch", type=int, default=Recipe.batch)
    parser.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=Recipe.cosine,
                        help="per-step cosine learning-rate decay over the run (--no-cosine: constant lr)")
    parser.add_argument("--warmup", type=float, default=Recipe.warmup, help="epochs of linear lr warm-up")
    parser.add_argument("--label-smoothing", type=float, default=Recipe.label_smoothing)
    parser.add_argument("--distill", action="store_true", help="distil from the dense model's outputs")
    parser.add_argument("--teacher", type=Path, help="the dense model for --distill (default: MODEL)")
    parser.add_argument("--temperature", type=float, default=Recipe.temperature)
    parser.add_argument("--distill-weight", type=float, default=Recipe.distill_weight,
                        help="the share of the loss that is distillation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()

    import torch
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_data, test_data = np.load(args.train), np.load(args.test) if args.test else None
    student_path = args.model
    if args.ratio is not None or args.target_macs is not None:
        student_path = Path(tempfile.mkdtemp()) / f"{args.model.stem}_pruned.onnx"
        options = {"criterion": args.criterion} if args.criterion else {}
        result = prune(args.model, args.ratio or 0.0, target_macs=args.target_macs, calib=args.calib,
                       output=student_path, **options)
        print(f"pruned: {result.channels_removed} channels removed, MACs "
              f"{result.report['after']['macs'] / result.report['before']['macs']:.3f} of the original")
    teacher = None
    if args.distill:
        if args.teacher is None and student_path == args.model:
            sys.exit("--distill needs the dense model: --teacher DENSE.onnx (or prune here with --ratio)")
        teacher = to_torch(args.teacher or args.model)

    module = to_torch(student_path)
    sample = {_input_name(student_path): train_data["x"][:32]}
    print(f"converted: max |torch - onnxruntime| = {check_equal(module, student_path, sample, atol=1e-5):.1e}")
    if test_data is not None:
        print(f"before training: test accuracy {accuracy(module, test_data['x'], test_data['y']):.2f}%")

    def report(epoch: int) -> None:
        if test_data is not None:
            print(f"epoch {epoch}: test accuracy {accuracy(module, test_data['x'], test_data['y']):.2f}%", flush=True)

    recipe = Recipe(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch=args.batch,
                    distill=args.distill, temperature=args.temperature, distill_weight=args.distill_weight,
                    seed=args.seed, cosine=args.cosine, warmup=args.warmup, label_smoothing=args.label_smoothing)
    start = time.perf_counter()
    train(module, train_data["x"], train_data["y"], recipe, teacher=teacher, after_epoch=report)
    print(f"trained {args.epochs} epoch(s) in {time.perf_counter() - start:.1f}s")
    export_onnx(module, args.out)
    print(f"wrote {args.out}: max |onnxruntime - torch| = {check_equal(module, args.out, sample, atol=1e-4):.1e}")
    if test_data is not None:
        print(f"{args.out}: test accuracy in onnxruntime {accuracy(args.out, test_data['x'], test_data['y']):.2f}%")


def _input_name(path: Path) -> str:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name


if __name__ == "__main__":
    main()
