"""Wild corpus family `post_tools`: models as they come out of the tools users run on exports.

Small transformers models (BERT, GPT-2, ViT) and CNNs (transformers ResNet / MobileNetV2), random
initialisation with randomized norms, exported with the legacy TorchScript exporter (opset 17
unless the name says otherwise), then post-processed exactly as the tool leaves them:

- onnxruntime.transformers optimizer (bert / gpt2 / vit, opt_level 0/1/2/99, CPU): com.microsoft
  Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu, FastGelu, ...
- onnxruntime.quantization: quantize_dynamic (MatMulInteger / DynamicQuantizeLinear, QAttention)
  and quantize_static (QDQ and QOperator, per-tensor and per-channel, an opset 11 QLinearConv model)
- onnxconverter_common.float16 (keep_io_types True / False)
- onnxslim and onnxsim

transformers is pinned to 4.46: its eager attention and embedding graphs are the patterns the
onnxruntime fusions match (transformers 5 exports masks with Where/And that no fusion matches).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

import common

REQUIREMENTS = ["torch==2.13.0", "transformers==4.46.3", "onnxscript", "onnxslim", "onnxsim",
                "onnxconverter-common"]

WORK = Path(tempfile.mkdtemp(prefix="post_tools-"))  # base exports and intermediates, removed at exit
atexit.register(shutil.rmtree, WORK, True)
SEQ = 16
VOCAB = 1000
IMG = 64


def _torch():
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return torch


def _randomize(model, seed: int) -> None:
    """Randomized norms (common.randomize_norms_torch) and small random biases: transformers
    initialises every Linear bias to zero, and the torch exporter would share one zero initializer
    between layers (the `_fresh` models keep exactly that)."""
    import torch
    common.randomize_norms_torch(model, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for sub in model.modules():
            if "Norm" in type(sub).__name__:
                continue
            bias = getattr(sub, "bias", None)
            if isinstance(bias, torch.nn.Parameter):
                bias.add_(torch.randn(bias.shape, generator=generator) * 0.02)


def _version(module_name: str) -> str:
    from importlib.metadata import version
    return version(module_name)


def _ops(path: Path) -> list[str]:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node})


def _custom_ops(path: Path) -> str:
    custom = [o for o in _ops(path) if "." in o]
    return ", ".join(custom) if custom else "none"


# --- base models: exported once per process, post-processed by the builders ---------------------

def _bert_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(1, SEQ), dtype=np.int64)
    ids[0, 0] = 101 % VOCAB
    mask = np.ones((1, SEQ), dtype=np.int64)
    mask[0, -3:] = 0
    types = np.zeros((1, SEQ), dtype=np.int64)
    types[0, SEQ // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@functools.lru_cache(maxsize=None)
def base_bert(dynamic: bool, fresh: bool = False) -> Path:
    """transformers BertModel, 2 layers, hidden 128, 4 heads, eager attention."""
    torch = _torch()
    from transformers import BertConfig, BertModel
    config = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=128, type_vocab_size=2,
                        attn_implementation="eager")
    model = BertModel(config).eval()
    if not fresh:
        _randomize(model, seed=1)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    inputs = tuple(torch.from_numpy(v) for v in _bert_inputs().values())
    path = WORK / f"bert{'_dyn' if dynamic else ''}{'_fresh' if fresh else ''}.onnx"
    axes = None
    if dynamic:
        axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids")}
        axes.update(last_hidden_state={0: "batch", 1: "sequence"}, pooler_output={0: "batch"})
    torch.onnx.export(Wrapper(model), inputs, str(path), input_names=list(_bert_inputs()),
                      output_names=["last_hidden_state", "pooler_output"], opset_version=17,
                      dynamic_axes=axes, dynamo=False)
    return path


def _gpt2_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"input_ids": rng.integers(0, VOCAB, size=(1, SEQ), dtype=np.int64),
            "attention_mask": np.ones((1, SEQ), dtype=np.int64)}


@functools.lru_cache(maxsize=None)
def base_gpt2() -> Path:
    """transformers GPT2LMHeadModel (tied lm_head), 2 layers, n_embd 128, 4 heads, dynamic axes."""
    torch = _torch()
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=128, n_layer=2, n_head=4,
                        use_cache=False, attn_implementation="eager")
    model = GPT2LMHeadModel(config).eval()
    _randomize(model, seed=2)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    inputs = tuple(torch.from_numpy(v) for v in _gpt2_inputs().values())
    path = WORK / "gpt2.onnx"
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"}}
    torch.onnx.export(Wrapper(model), inputs, str(path), input_names=list(_gpt2_inputs()),
                      output_names=["logits"], opset_version=17, dynamic_axes=axes, dynamo=False)
    return path


def _image(size: int = IMG, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=(1, 3, size, size)).astype(np.float32).clip(-2.5, 2.5)


@functools.lru_cache(maxsize=None)
def base_vit() -> Path:
    """transformers ViTForImageClassification, 64 px, patch 16 (17 tokens), 2 layers, hidden 128."""
    torch = _torch()
    from transformers import ViTConfig, ViTForImageClassification
    config = ViTConfig(image_size=IMG, patch_size=16, hidden_size=128, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=512, num_labels=10,
                       attn_implementation="eager")
    model = ViTForImageClassification(config).eval()
    _randomize(model, seed=3)

    path = WORK / "vit.onnx"
    torch.onnx.export(_image_logits(model), (torch.from_numpy(_image()),), str(path), input_names=["pixel_values"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    return path


def _image_logits(model):
    """The model as pixel_values -> logits (transformers models return an output object)."""
    torch = _torch()

    class ImageLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    return ImageLogits(model)


@functools.lru_cache(maxsize=None)
def base_cnn(arch: str, opset: int = 17) -> Path:
    """transformers ResNetForImageClassification (basic blocks, ResNet-18 layout at half width)
    or MobileNetV2ForImageClassification (depth_multiplier 0.5, tf_padding), 64 px (96 px MobileNetV2)."""
    torch = _torch()
    if arch == "resnet":
        from transformers import ResNetConfig, ResNetForImageClassification
        config = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 2, 2],
                              layer_type="basic", num_labels=10)
        model = ResNetForImageClassification(config).eval()
        size = IMG
    else:
        from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
        config = MobileNetV2Config(depth_multiplier=0.5, image_size=96, num_labels=10)
        model = MobileNetV2ForImageClassification(config).eval()
        size = 96
    _randomize(model, seed=4)

    path = WORK / f"{arch}_op{opset}.onnx"
    torch.onnx.export(_image_logits(model), (torch.from_numpy(_image(size)),), str(path), input_names=["pixel_values"],
                      output_names=["logits"], opset_version=opset, dynamo=False)
    return path


def _cnn_size(arch: str) -> int:
    return IMG if arch == "resnet" else 96


# --- onnxruntime transformer optimizer ----------------------------------------------------------

def _ort_optimize(base: Path, out_path: Path, model_type: str, level: int, **kw) -> str:
    from onnxruntime.transformers.optimizer import optimize_model
    optimized = optimize_model(str(base), model_type=model_type, num_heads=4, hidden_size=128,
                               opt_level=level, use_gpu=False, **kw)
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(out_path))
    return ", ".join(f"{k} x{v}" for k, v in stats.items()) or "nothing fused"


def _ort_builder(kind: str, level: int):
    def build(out: Path) -> common.Built:
        name = f"post_{kind}_ort_o{level}"
        path = out / f"{name}.onnx"
        if kind == "bert":
            fused = _ort_optimize(base_bert(True), path, "bert", level)
            inputs, source = _bert_inputs(), "transformers 4.46 BertModel (2 layers, hidden 128, 4 heads), dynamic axes"
            model_kind = "transformer"
        elif kind == "bertstatic":
            fused = _ort_optimize(base_bert(False), path, "bert", level)
            inputs, source = _bert_inputs(), "transformers 4.46 BertModel (2 layers, hidden 128, 4 heads), static shapes"
            model_kind = "transformer"
        elif kind == "gpt2":
            fused = _ort_optimize(base_gpt2(), path, "gpt2", level)
            inputs, source = _gpt2_inputs(), "transformers 4.46 GPT2LMHeadModel (2 layers, n_embd 128, 4 heads, tied lm_head), dynamic axes"
            model_kind = "transformer"
        else:
            fused = _ort_optimize(base_vit(), path, "vit", level)
            inputs, source = {"pixel_values": _image()}, "transformers 4.46 ViTForImageClassification (64 px, patch 16, 2 layers, hidden 128)"
            model_kind = "transformer"
        return common.Built(
            inputs=inputs, source=source, kind=model_kind,
            exporter=f"torch.onnx legacy opset 17 + onnxruntime {_version('onnxruntime')} transformers optimizer "
                     f"model_type={'bert' if kind.startswith('bert') else kind} opt_level={level} use_gpu=False",
            notes=f"fused (optimizer statistics): {fused}; custom-domain ops: {_custom_ops(path)}",
            extra={"fused": fused})
    return build


# --- onnxruntime quantization -------------------------------------------------------------------

class _ImageReader:
    """A small random calibration set (onnxruntime CalibrationDataReader protocol)."""

    def __init__(self, size: int, count: int = 8):
        self.batches = iter([{"pixel_values": _image(size, seed=100 + i)} for i in range(count)])

    def get_next(self):
        return next(self.batches, None)


def _bert_qdyn(out: Path) -> common.Built:
    from onnxruntime.quantization import quantize_dynamic, QuantType
    path = out / "post_bert_qdyn.onnx"
    quantize_dynamic(str(base_bert(False)), str(path), weight_type=QuantType.QInt8)
    return common.Built(
        inputs=_bert_inputs(), source="transformers 4.46 BertModel (2 layers, hidden 128, 4 heads)", kind="transformer",
        exporter=f"torch.onnx legacy opset 17 + onnxruntime {_version('onnxruntime')} quantize_dynamic (QOperator, QInt8 weights)",
        notes=f"dynamic int8: MatMulInteger / DynamicQuantizeLinear; custom-domain ops: {_custom_ops(path)}")


def _bert_ort_qdyn(out: Path) -> common.Built:
    """The documented flow for BERT on CPU: transformers optimizer, then quantize_dynamic (QAttention)."""
    from onnxruntime.quantization import quantize_dynamic, QuantType
    optimized = WORK / "bert_ort_o1.onnx"
    fused = _ort_optimize(base_bert(True), optimized, "bert", 1)
    path = out / "post_bert_ort_o1_qdyn.onnx"
    # as the quantizer's error message advises: shape inference cannot type the com.microsoft outputs
    quantize_dynamic(str(optimized), str(path), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": 1})  # onnx.TensorProto.FLOAT
    return common.Built(
        inputs=_bert_inputs(), source="transformers 4.46 BertModel (2 layers, hidden 128, 4 heads)", kind="transformer",
        exporter=f"torch.onnx legacy opset 17 (dynamic axes) + onnxruntime {_version('onnxruntime')} transformers optimizer "
                 "opt_level=1 + quantize_dynamic (QOperator, QInt8, DefaultTensorType=FLOAT)",
        notes=f"optimizer fused {fused}, then dynamic int8; custom-domain ops: {_custom_ops(path)}")


def _static_builder(arch: str, fmt: str, per_channel: bool, opset: int = 17, preprocess: bool = True):
    def build(out: Path) -> common.Built:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
        name = f"post_{arch}_{fmt.lower()}{'_pc' if per_channel else ''}{f'_op{opset}' if opset != 17 else ''}"
        path = out / f"{name}.onnx"
        base = base_cnn(arch, opset)
        if preprocess:
            pre = WORK / f"{name}.pre.onnx"
            quant_pre_process(str(base), str(pre))
            base = pre
        size = _cnn_size(arch)
        quantize_static(str(base), str(path), _ImageReader(size),
                        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                        per_channel=per_channel, activation_type=QuantType.QUInt8 if fmt == "QOp" else QuantType.QInt8,
                        weight_type=QuantType.QInt8)
        source = ("transformers 4.46 ResNetForImageClassification (basic, depths 2-2-2-2, widths 32-256, 64 px)"
                  if arch == "resnet" else
                  "transformers 4.46 MobileNetV2ForImageClassification (depth_multiplier 0.5, 96 px, tf_padding)")
        return common.Built(
            inputs={"pixel_values": _image(size)}, source=source, kind="cnn",
            exporter=f"torch.onnx legacy opset {opset} + {'quant_pre_process + ' if preprocess else ''}"
                     f"onnxruntime {_version('onnxruntime')} quantize_static {fmt} per_channel={per_channel}",
            notes=f"static int8 ({fmt}, {'per-channel' if per_channel else 'per-tensor'}), 8 random calibration images; "
                  f"ops: {', '.join(_ops(path))}")
    return build


# --- float16 ------------------------------------------------------------------------------------

def _fp16_builder(kind: str, keep_io_types: bool):
    def build(out: Path) -> common.Built:
        import onnx
        name = f"post_{kind}_fp16{'' if keep_io_types else '_io16'}"
        path = out / f"{name}.onnx"
        kwargs = {}
        if kind == "bert":
            base, inputs = base_bert(False), _bert_inputs()
            source, model_kind = "transformers 4.46 BertModel (2 layers, hidden 128, 4 heads)", "transformer"
        else:
            base, inputs = base_cnn(kind), {"pixel_values": _image(_cnn_size(kind))}
            source, model_kind = f"transformers 4.46 {'ResNet' if kind == 'resnet' else 'MobileNetV2'}ForImageClassification", "cnn"
            if not keep_io_types:
                inputs = {k: v.astype(np.float16) for k, v in inputs.items()}
        if kind == "bert" and keep_io_types:
            # onnxconverter_common's keep_io_types=True leaves the pooler's Gather typed float (ORT refuses
            # the model); onnxruntime's own fork of the converter handles it
            from onnxruntime.transformers import float16
            tool = f"onnxruntime {_version('onnxruntime')} transformers.float16"
        else:
            from onnxconverter_common import float16
            tool = f"onnxconverter_common {_version('onnxconverter-common')}"
            if kind == "bert":
                # the extended mask's Cast(to=FLOAT) keeps its `to` while its output is retyped float16:
                # ORT refuses the model unless that node is blocked (kept float32, Casts around it)
                kwargs["node_block_list"] = ["/inner/Cast"]
        model = float16.convert_float_to_float16(onnx.load(str(base)), keep_io_types=keep_io_types, **kwargs)
        onnx.save(model, str(path))
        return common.Built(
            inputs=inputs, source=source, kind=model_kind,
            exporter=f"torch.onnx legacy opset 17 + {tool} convert_float_to_float16(keep_io_types={keep_io_types}"
                     + (f", node_block_list={kwargs['node_block_list']}" if kwargs else "") + ")",
            notes="fp16 initializers; " + ("Cast nodes at float inputs/outputs" if keep_io_types else "float16 graph inputs/outputs")
                  + f"; ops: {', '.join(_ops(path))}")
    return build


# --- onnxslim / onnxsim -------------------------------------------------------------------------

def _base_for(kind: str):
    if kind == "bert":
        return base_bert(True), _bert_inputs(), "transformers 4.46 BertModel (2 layers, hidden 128, 4 heads), dynamic axes", "transformer"
    if kind == "bertstatic":
        return base_bert(False), _bert_inputs(), "transformers 4.46 BertModel (2 layers, hidden 128, 4 heads), static shapes", "transformer"
    if kind == "bertfresh":
        return base_bert(False, True), _bert_inputs(), "transformers 4.46 BertModel (2 layers, hidden 128, 4 heads), default init", "transformer"
    if kind == "vit":
        return base_vit(), {"pixel_values": _image()}, "transformers 4.46 ViTForImageClassification (64 px, patch 16, 2 layers)", "transformer"
    return (base_cnn(kind), {"pixel_values": _image(_cnn_size(kind))},
            f"transformers 4.46 {'ResNet' if kind == 'resnet' else 'MobileNetV2'}ForImageClassification", "cnn")


def _slim_builder(kind: str, name: str | None = None):
    def build(out: Path) -> common.Built:
        import onnx
        import onnxslim
        base, inputs, source, model_kind = _base_for(kind)
        path = out / f"{name or f'post_{kind}_slim'}.onnx"
        onnx.save(onnxslim.slim(onnx.load(str(base))), str(path))
        return common.Built(inputs=inputs, source=source, kind=model_kind,
                            exporter=f"torch.onnx legacy opset 17 + onnxslim {_version('onnxslim')} slim()",
                            notes=f"ops: {', '.join(_ops(path))}")
    return build


def _sim_builder(kind: str, name: str | None = None):
    def build(out: Path) -> common.Built:
        import onnx
        import onnxsim
        base, inputs, source, model_kind = _base_for(kind)
        path = out / f"{name or f'post_{kind}_sim'}.onnx"
        model, ok = onnxsim.simplify(onnx.load(str(base)))
        if not ok:
            raise RuntimeError("onnxsim check failed")
        onnx.save(model, str(path))
        return common.Built(inputs=inputs, source=source, kind=model_kind,
                            exporter=f"torch.onnx legacy opset 17 + onnxsim {_version('onnxsim')} simplify()",
                            notes=f"ops: {', '.join(_ops(path))}")
    return build


# Not built: BERT and GPT-2 at opt_level 99 (byte-identical to opt_level 2 on CPU); GPT-2's attention
# is not fused at any level (the gpt2 fusion wants past inputs).
BUILDERS = {
    # onnxruntime transformers optimizer
    "post_bert_ort_o1": _ort_builder("bert", 1),
    "post_bert_ort_o2": _ort_builder("bert", 2),
    "post_bertstatic_ort_o1": _ort_builder("bertstatic", 1),
    "post_gpt2_ort_o1": _ort_builder("gpt2", 1),
    "post_gpt2_ort_o2": _ort_builder("gpt2", 2),
    "post_vit_ort_o1": _ort_builder("vit", 1),
    "post_vit_ort_o2": _ort_builder("vit", 2),
    "post_vit_ort_o99": _ort_builder("vit", 99),
    # onnxruntime quantization
    "post_bert_qdyn": _bert_qdyn,
    "post_bert_ort_o1_qdyn": _bert_ort_qdyn,
    "post_resnet_qdq": _static_builder("resnet", "QDQ", False),
    "post_resnet_qdq_pc": _static_builder("resnet", "QDQ", True),
    "post_resnet_qop": _static_builder("resnet", "QOp", False),
    "post_resnet_qop_pc": _static_builder("resnet", "QOp", True),
    "post_mnv2_qdq_pc": _static_builder("mnv2", "QDQ", True, preprocess=False),
    "post_mnv2_qop": _static_builder("mnv2", "QOp", False, preprocess=False),
    "post_resnet_qop_op11": _static_builder("resnet", "QOp", False, opset=11, preprocess=False),
    # float16
    "post_resnet_fp16": _fp16_builder("resnet", True),
    "post_mnv2_fp16_io16": _fp16_builder("mnv2", False),
    "post_bert_fp16": _fp16_builder("bert", True),
    "post_bert_fp16_io16": _fp16_builder("bert", False),
    # onnxslim / onnxsim
    "post_bert_slim": _slim_builder("bert"),
    "post_bert_sim": _sim_builder("bertstatic", "post_bert_sim"),
    "post_vit_slim": _slim_builder("vit"),
    "post_vit_sim": _sim_builder("vit"),
    "post_mnv2_slim": _slim_builder("mnv2"),
    "post_resnet_sim": _sim_builder("resnet"),
    "post_bert_slim_fresh": _slim_builder("bertfresh", "post_bert_slim_fresh"),
}

if __name__ == "__main__":
    common.main(BUILDERS)
