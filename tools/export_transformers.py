"""Build small, seeded, randomly initialised transformers and export them as ONNX fixtures.

Run from the repo root:  python tools/export_transformers.py
Needs torch, transformers and onnxscript (for the dynamo exporter); none of them is a runtime
dependency of spa. Models are built from config objects: nothing is downloaded from a hub.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification)

from fixture_report import max_error, print_report, summary  # tools/ is on sys.path when run as a script

OUT_DIR = Path(__file__).resolve().parent.parent / "models" / "transformers"
SEED = 0
ATOL = 1e-4
OPSET = 17  # legacy exporter
IR_VERSION = 10  # loaded by onnxruntime >= 1.18 (spa's floor) up to 1.31; the dynamo exporter writes 10 too
INIT_RANGE = 0.1  # HF's default 0.02 makes attention almost uniform at these widths


class Logits(nn.Module):
    """Calls a Hugging Face model with the given keyword inputs and returns only `.logits`.

    A decoder called with input_ids alone gets an all-ones attention_mask: without any mask,
    transformers traces a packed-sequence detector (torch.diff + cumsum on position ids) into the
    causal mask, which the legacy exporter cannot export.
    """

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.input_names, inputs))
        if self.input_names == ("input_ids",):
            kwargs["attention_mask"] = torch.ones_like(inputs[0])
        return self.model(**kwargs).logits


BATCH = {0: "batch"}
TOKENS = {0: "batch", 1: "sequence"}


@dataclass
class Fixture:
    model: Logits
    inputs: tuple[torch.Tensor, ...]  # example inputs, batch 1, in model.input_names order
    other_inputs: tuple[torch.Tensor, ...]  # another batch (and sequence length), for the _dynamic file
    input_axes: dict[int, str]  # axes of every input that the _dynamic file leaves free
    logits_axes: dict[int, str]


def _finish(model: nn.Module, input_names: tuple[str, ...]) -> Logits:
    """Non-trivial norms and biases (HF initialises them to 1 and 0), eval mode."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.2, 0.2)
            elif p.dim() == 1:  # LayerNorm / RMSNorm weight
                p.uniform_(0.5, 1.5)
    return Logits(model, input_names).eval()


def _ids(batch: int, seq: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(SEED))


def _padding_mask(batch: int, seq: int) -> torch.Tensor:
    """1 = token, 0 = padding; row b has its last b + 2 positions padded."""
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for b in range(batch):
        mask[b, seq - b - 2:] = 0
    return mask


def bert_tiny() -> Fixture:
    """BERT encoder + pooler + 4-way classifier: hidden 32, 4 heads x 8, FFN 64, vocab 100, seq 12."""
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16, num_labels=4,
                        initializer_range=INIT_RANGE, attn_implementation="eager")
    torch.manual_seed(SEED)
    model = _finish(BertForSequenceClassification(config), ("input_ids", "attention_mask"))
    return Fixture(model, (_ids(1, 12, 100), _padding_mask(1, 12)),
                   (_ids(3, 9, 100), _padding_mask(3, 9)), TOKENS, BATCH)


def vit_tiny() -> Fixture:
    """ViT classifier on 1x3x32x32, patch 8 (16 patches + CLS): hidden 48, 4 heads x 12, MLP 96, 10 classes."""
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=48, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=96, num_labels=10,
                       initializer_range=INIT_RANGE, attn_implementation="eager")
    torch.manual_seed(SEED)
    model = _finish(ViTForImageClassification(config), ("pixel_values",))
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(SEED))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(SEED + 1))
    return Fixture(model, (image,), (images,), BATCH, BATCH)


def gpt2_tiny() -> Fixture:
    """GPT-2 LM, tied embeddings: hidden 64, 4 heads x 16, MLP 128, vocab 160, seq 12."""
    config = GPT2Config(vocab_size=160, n_positions=16, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                        bos_token_id=0, eos_token_id=0, use_cache=False, initializer_range=INIT_RANGE,
                        attn_implementation="eager")
    torch.manual_seed(SEED)
    model = _finish(GPT2LMHeadModel(config), ("input_ids",))
    return Fixture(model, (_ids(1, 12, 160),), (_ids(3, 9, 160),), TOKENS, TOKENS)


def llama_tiny() -> Fixture:
    """Llama LM with GQA (4 query heads x 16, 2 KV heads), RMSNorm, SwiGLU 96, RoPE, vocab 192, seq 12."""
    config = LlamaConfig(vocab_size=192, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                         use_cache=False, initializer_range=INIT_RANGE, attn_implementation="eager")
    torch.manual_seed(SEED)
    model = _finish(LlamaForCausalLM(config), ("input_ids",))
    return Fixture(model, (_ids(1, 12, 192),), (_ids(3, 9, 192),), TOKENS, TOKENS)


FIXTURES: dict[str, Callable[[], Fixture]] = {f.__name__: f for f in (bert_tiny, vit_tiny, gpt2_tiny, llama_tiny)}


# ---------------------------------------------------------------- export + check


def _save(proto: onnx.ModelProto, path: Path) -> None:
    """One self-contained file at IR_VERSION, without the dynamo exporter's per-node stack traces
    (they hold absolute paths of this machine's site-packages)."""
    proto.ir_version = IR_VERSION
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(proto, str(path), save_as_external_data=False)


def export_legacy(fx: Fixture, path: Path, dynamic: bool = False) -> None:
    """TorchScript exporter, opset 17, constant folding."""
    names = list(fx.model.input_names)
    axes = {name: fx.input_axes for name in names} | {"logits": fx.logits_axes}
    tmp = path.with_suffix(".tmp")
    torch.onnx.export(fx.model, fx.inputs, str(tmp), dynamo=False, opset_version=OPSET, do_constant_folding=True,
                      input_names=names, output_names=["logits"], dynamic_axes=axes if dynamic else None)
    _save(onnx.load(str(tmp)), path)
    tmp.unlink()


def export_dynamo(fx: Fixture, path: Path, dynamic: bool = False) -> None:
    """torch.export-based exporter with its defaults (opset 18+, onnxscript optimizer)."""
    dims = {axis: torch.export.Dim(name) for axis, name in fx.input_axes.items()}
    shapes = (tuple(dims for _ in fx.inputs),)  # one entry: forward() takes *inputs
    program = torch.onnx.export(fx.model, fx.inputs, dynamo=True, verbose=False,
                                input_names=list(fx.model.input_names), output_names=["logits"],
                                dynamic_shapes=shapes if dynamic else None)
    _save(program.model_proto, path)


# file-name suffix -> exporter; each fixture gets every variant except where ONLY restricts it
EXPORTERS: dict[str, Callable[[Fixture, Path], None]] = {
    "": export_legacy,
    "_dynamo": export_dynamo,
    "_dynamic": partial(export_legacy, dynamic=True),
    "_dynamo_dynamic": partial(export_dynamo, dynamic=True),
}
ONLY = {"_dynamo_dynamic": ("bert_tiny", "llama_tiny")}  # keeps models/transformers/ under 5 MB


def check(path: Path) -> onnx.ModelProto:
    """The file must be self-contained and valid."""
    model = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer), path
    onnx.checker.check_model(str(path), full_check=True)
    return model


def compare(fx: Fixture, path: Path, inputs: tuple[torch.Tensor, ...]) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = fx.model(*inputs).numpy()
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    (got,) = session.run(None, feeds)
    return max_error(path.name, got, expected, ATOL)


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for name, build in FIXTURES.items():
        fx = build()
        for suffix, export in EXPORTERS.items():
            if name not in ONLY.get(suffix, (name,)):
                continue
            path = OUT_DIR / f"{name}{suffix}.onnx"
            try:
                export(fx, path)
            except Exception as e:  # noqa: BLE001 - a dynamo failure is reported and skipped
                if not suffix.startswith("_dynamo"):
                    raise
                path.unlink(missing_ok=True)
                skipped.append(f"{path.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                continue
            onnx_model = check(path)
            err = compare(fx, path, fx.inputs)
            if suffix.endswith("_dynamic"):
                err = max(err, compare(fx, path, fx.other_inputs))
            rows.append(summary(onnx_model, path, err))
    print_report(rows, OUT_DIR, skipped)


if __name__ == "__main__":
    main()
