"""Wild corpus, family `vision_torch`: vision models exported by torch.onnx (and by tools around it).

torchvision (tag `tv_`), timm (`timm_`) and Ultralytics YOLO (`yolo_`) architectures, all built
with random initialisation (nothing can be downloaded here) and, unless the name ends in
`_fresh`, with randomized BatchNorm statistics and non-trivial norm affine parameters
(common.randomize_norms_torch). Most go through the legacy TorchScript exporter
(dynamo=False, opset 17), a few through the dynamo exporter (dynamo=True), Ultralytics'
own exporter for YOLO, and onnxslim / onnxsim for some post-processed copies.
Models are small on purpose: small members of each family at 112-224 px.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("YOLO_OFFLINE", "True")  # Ultralytics: no network calls (settings, assets)
os.environ.setdefault("YOLO_VERBOSE", "False")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm", "ultralytics", "onnxscript", "onnxslim", "onnxsim"]


# --- helpers -------------------------------------------------------------------------------

def _torch():
    import torch
    torch.set_num_threads(1)
    return torch


def _image(shape, seed: int = 0, unit: bool = False) -> np.ndarray:
    """An image batch: ImageNet-normalised values (about N(0, 1), clipped) or [0, 1] pixels."""
    rng = np.random.default_rng(seed)
    if unit:
        return rng.random(shape, dtype=np.float32)
    return np.clip(rng.standard_normal(shape), -2.5, 2.5).astype(np.float32)


def _graph_inputs(path: Path) -> list[str]:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _feed(path: Path, *arrays: np.ndarray) -> dict[str, np.ndarray]:
    names = _graph_inputs(path)
    if len(names) != len(arrays):
        raise ValueError(f"graph inputs {names} but {len(arrays)} sample arrays")
    return dict(zip(names, arrays))


def _prepare(model, seed: int, fresh: bool):
    model.eval()
    if not fresh:
        common.randomize_norms_torch(model, seed)
        _perturb_constants(model, seed)
    return model


def _perturb_constants(model, seed: int) -> None:
    """Parameters that random init leaves constant (zero biases, layer-scale gammas of 1e-6,
    zero-initialised last convs) get small random values, as training would give them: else
    the exporter merges equal tensors into one shared initializer (kept for `_fresh` models)."""
    torch = _torch()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
                scale = float(p.reshape(-1)[0].abs()) or 0.02
                p.add_(torch.randn(p.shape, generator=generator) * scale * 0.1
                       if p.reshape(-1)[0] != 0 else torch.randn(p.shape, generator=generator) * scale)


def _versions() -> str:
    import torch
    return f"torch {torch.__version__.split('+')[0]}"


def _export_legacy(model, x: np.ndarray, path: Path, opset: int = 17, dynamic_axes=None,
                   names: bool = True) -> str:
    torch = _torch()
    kwargs = dict(input_names=["input"], output_names=["output"]) if names else {}
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=opset,
                          dynamic_axes=dynamic_axes, do_constant_folding=True, **kwargs)
    return f"torch.onnx legacy (dynamo=False) opset {opset}, {_versions()}"


def _export_dynamo(model, x: np.ndarray, path: Path) -> str:
    """torch.onnx.export(dynamo=True) with its defaults (opset, optimize, external data) as a user calls it."""
    torch = _torch()
    with torch.no_grad():
        program = torch.onnx.export(model, (torch.from_numpy(x),), dynamo=True)
    program.save(str(path))
    import onnx
    opset = {o.domain: o.version for o in onnx.load(str(path), load_external_data=False).opset_import}.get("")
    return f"torch.onnx dynamo=True (default opset {opset}, optimize=True), {_versions()}"


def _slim(src: Path, dst: Path) -> str:
    import onnx
    import onnxslim
    model = onnxslim.slim(str(src))
    onnx.save(model, str(dst))
    return f"onnxslim {onnxslim.__version__}"


def _sim(src: Path, dst: Path) -> str:
    import onnx
    import onnxsim
    model, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    onnx.save(model, str(dst))
    return f"onnxsim {onnxsim.__version__}"


def _make(name: str, factory, size: int, source: str, kind: str = "cnn", how: str = "legacy",
          fresh: bool = False, seed: int = 0, notes: str = "", batch: int = 1, dynamic_axes=None,
          names: bool = True, post=None):
    """A builder: `factory()` makes the torch module; `how` is legacy | dynamo; `post` is
    None | "slim" | "sim" (export to a scratch file, then write the tool's output)."""

    def build(out: Path) -> common.Built:
        _torch()
        model = _prepare(factory(), seed, fresh)
        x = _image((batch, 3, size, size), seed=seed)
        path = out / f"{name}.onnx"
        with tempfile.TemporaryDirectory(dir=out) as scratch:
            target = Path(scratch) / "export.onnx" if post else path
            if how == "dynamo":
                exporter = _export_dynamo(model, x, target)
            else:
                exporter = _export_legacy(model, x, target, dynamic_axes=dynamic_axes, names=names)
            if post == "slim":
                exporter += " -> " + _slim(target, path)
            elif post == "sim":
                exporter += " -> " + _sim(target, path)
        init = "default init (fresh)" if fresh else "random init, randomized norms"
        return common.Built(inputs=_feed(path, x), source=source, exporter=exporter, kind=kind,
                            notes=f"{size}px, {init}" + (f"; {notes}" if notes else ""))

    return build


def _tv(arch: str, **kwargs):
    def factory():
        import torchvision
        return getattr(torchvision.models, arch)(weights=None, **kwargs)
    return factory


def _timm(arch: str, **kwargs):
    def factory():
        import timm
        return timm.create_model(arch, pretrained=False, **kwargs)
    return factory


def _yolo(name: str, cfg: str, imgsz: int, simplify: bool, dynamic: bool = False, seed: int = 0,
          notes: str = ""):
    """Ultralytics' own exporter on a model built from its yaml (no download)."""

    def build(out: Path) -> common.Built:
        _torch()
        import ultralytics
        from ultralytics import YOLO
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory(dir=out) as scratch:
            os.chdir(scratch)
            try:
                model = YOLO(cfg)
                common.randomize_norms_torch(model.model, seed)
                _perturb_constants(model.model, seed)
                exported = Path(model.export(format="onnx", imgsz=imgsz, simplify=simplify, dynamic=dynamic,
                                             batch=1, device="cpu"))
            finally:
                os.chdir(cwd)
            if not exported.is_absolute():
                exported = Path(scratch) / exported
            shutil.move(str(exported), out / f"{name}.onnx")
        path = out / f"{name}.onnx"
        import onnx
        model_proto = onnx.load(str(path), load_external_data=False)
        opset = {o.domain: o.version for o in model_proto.opset_import}.get("")
        x = _image((1, 3, imgsz, imgsz), seed=seed, unit=True)
        task = "segment" if "seg" in cfg else "classify" if "cls" in cfg else "detect"
        return common.Built(
            inputs=_feed(path, x), source=f"ultralytics {ultralytics.__version__} {cfg}",
            exporter=f"ultralytics exporter (format=onnx, opset {opset}, simplify={simplify}, dynamic={dynamic}), "
                     f"{_versions()}",
            kind="cnn" if task == "classify" else "detector",
            notes=f"{imgsz}px, {task}, random init from yaml, randomized BN (fused by the exporter)"
                  + (f"; {notes}" if notes else ""))

    return build


# --- the models ------------------------------------------------------------------------------

BUILDERS = {
    # torchvision, legacy exporter, opset 17
    "tv_resnet18": _make("tv_resnet18", _tv("resnet18"), 160, "torchvision resnet18"),
    "tv_resnet50": _make("tv_resnet50", _tv("resnet50"), 128, "torchvision resnet50"),
    "tv_mobilenet_v2": _make("tv_mobilenet_v2", _tv("mobilenet_v2"), 224, "torchvision mobilenet_v2"),
    "tv_mobilenet_v3_small": _make("tv_mobilenet_v3_small", _tv("mobilenet_v3_small"), 224,
                                   "torchvision mobilenet_v3_small", notes="SE with hardsigmoid, hardswish"),
    "tv_efficientnet_b0": _make("tv_efficientnet_b0", _tv("efficientnet_b0"), 224, "torchvision efficientnet_b0",
                                notes="SE with SiLU/sigmoid"),
    "tv_regnet_y_400mf": _make("tv_regnet_y_400mf", _tv("regnet_y_400mf"), 224, "torchvision regnet_y_400mf",
                               notes="grouped convs (group width 8), SE"),
    "tv_densenet121": _make("tv_densenet121", _tv("densenet121"), 160, "torchvision densenet121",
                            notes="dense Concat, pre-activation BN"),
    "tv_shufflenet_v2_x1_0": _make("tv_shufflenet_v2_x1_0", _tv("shufflenet_v2_x1_0"), 224,
                                   "torchvision shufflenet_v2_x1_0", notes="channel split + channel shuffle"),
    "tv_squeezenet1_1": _make("tv_squeezenet1_1", _tv("squeezenet1_1"), 224, "torchvision squeezenet1_1",
                              notes="fire modules (Concat of 1x1 and 3x3), conv classifier"),
    "tv_googlenet": _make("tv_googlenet", _tv("googlenet", aux_logits=False, init_weights=True), 224,
                          "torchvision googlenet (aux_logits=False)", notes="inception Concat branches"),
    "tv_mnasnet0_5": _make("tv_mnasnet0_5", _tv("mnasnet0_5"), 224, "torchvision mnasnet0_5"),
    "tv_convnext_tiny": _make("tv_convnext_tiny", _tv("convnext_tiny"), 128, "torchvision convnext_tiny",
                              notes="LayerNorm2d via permute, layer scale"),
    # variants: dynamic axes, default init, exporter-chosen names
    "tv_resnet18_dynbatch": _make("tv_resnet18_dynbatch", _tv("resnet18"), 160, "torchvision resnet18",
                                  batch=2, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                                  notes="dynamic batch axis; sample batch 2"),
    "tv_mobilenet_v2_fresh": _make("tv_mobilenet_v2_fresh", _tv("mobilenet_v2"), 224, "torchvision mobilenet_v2",
                                   fresh=True, names=False,
                                   notes="exporter-chosen input/output names"),
    # torchvision, dynamo exporter
    "tv_resnet18_dynamo": _make("tv_resnet18_dynamo", _tv("resnet18"), 160, "torchvision resnet18", how="dynamo"),
    "tv_mobilenet_v3_small_dynamo": _make("tv_mobilenet_v3_small_dynamo", _tv("mobilenet_v3_small"), 224,
                                          "torchvision mobilenet_v3_small", how="dynamo"),
    # torchvision, post-processed
    "tv_resnet18_slim": _make("tv_resnet18_slim", _tv("resnet18"), 160, "torchvision resnet18", post="slim"),
    "tv_mobilenet_v3_small_sim": _make("tv_mobilenet_v3_small_sim", _tv("mobilenet_v3_small"), 224,
                                       "torchvision mobilenet_v3_small", post="sim"),

    # timm, legacy exporter, opset 17
    "timm_deit_tiny": _make("timm_deit_tiny", _timm("deit_tiny_patch16_224"), 224, "timm deit_tiny_patch16_224",
                            kind="transformer",
                            notes="fused qkv reshaped (B,N,3,H,D), permuted, unbound; SDPA"),
    "timm_vit_tiny_fresh": _make("timm_vit_tiny_fresh", _timm("vit_tiny_patch16_224"), 224,
                                 "timm vit_tiny_patch16_224", kind="transformer", fresh=True,
                                 notes="exporter dedups equal initializers (zero biases, unit LN scales)"),
    "timm_tf_efficientnet_b0": _make("timm_tf_efficientnet_b0", _timm("tf_efficientnet_b0"), 224,
                                     "timm tf_efficientnet_b0", notes="TF 'same' padding computed in the graph"),
    "timm_tf_mobilenetv3_small_100": _make("timm_tf_mobilenetv3_small_100", _timm("tf_mobilenetv3_small_100"), 224,
                                           "timm tf_mobilenetv3_small_100",
                                           notes="TF 'same' padding computed in the graph"),
    "timm_resnetv2_50x1_bit_halfwidth": _make(
        "timm_resnetv2_50x1_bit_halfwidth",
        _timm("resnetv2_50x1_bit", channels=(128, 256, 512, 1024), stem_chs=32, zero_init_last=False), 128,
        "timm resnetv2_50x1_bit (layers 3,4,6,3; channels halved to keep the file small)",
        notes="BiT: StdConv2d (weight standardisation in the graph), GroupNorm, pre-activation"),
    "timm_convnext_atto": _make("timm_convnext_atto", _timm("convnext_atto"), 160, "timm convnext_atto"),
    "timm_convnextv2_atto": _make("timm_convnextv2_atto", _timm("convnextv2_atto"), 160, "timm convnextv2_atto",
                                  notes="Global Response Normalization"),
    "timm_regnetx_002": _make("timm_regnetx_002", _timm("regnetx_002"), 224, "timm regnetx_002",
                              notes="grouped convs"),
    "timm_ghostnet_100": _make("timm_ghostnet_100", _timm("ghostnet_100"), 224, "timm ghostnet_100",
                               notes="ghost modules: cheap depthwise op, Concat then Slice"),
    "timm_swin_tiny_w48": _make("timm_swin_tiny_w48", _timm("swin_tiny_patch4_window7_224", embed_dim=48),
                                224, "timm swin_tiny_patch4_window7_224 (embed_dim=48)", kind="transformer",
                                notes="windowed attention, shifted windows (roll), relative position bias"),
    "timm_efficientvit_b0": _make("timm_efficientvit_b0", _timm("efficientvit_b0"), 224, "timm efficientvit_b0 (MIT)",
                                  notes="ReLU linear attention, multi-scale aggregation"),
    "timm_levit_128s": _make("timm_levit_128s", _timm("levit_128s"), 224, "timm levit_128s", kind="transformer",
                             notes="BN-linear layers, attention biases, subsample attention"),
    "timm_mixer_s16": _make("timm_mixer_s16", _timm("mixer_s16_224"), 224, "timm mixer_s16_224", kind="mlp",
                            notes="token-mixing MLP over transposed tokens"),
    # timm, dynamo exporter
    "timm_deit_tiny_dynamo": _make("timm_deit_tiny_dynamo", _timm("deit_tiny_patch16_224"), 224,
                                   "timm deit_tiny_patch16_224", kind="transformer", how="dynamo"),
    "timm_convnext_atto_dynamo": _make("timm_convnext_atto_dynamo", _timm("convnext_atto"), 160,
                                       "timm convnext_atto", how="dynamo"),
    # timm, post-processed
    "timm_deit_tiny_sim": _make("timm_deit_tiny_sim", _timm("deit_tiny_patch16_224"), 224,
                                "timm deit_tiny_patch16_224", kind="transformer", post="sim"),
    "timm_tf_efficientnet_b0_slim": _make("timm_tf_efficientnet_b0_slim", _timm("tf_efficientnet_b0"), 224,
                                          "timm tf_efficientnet_b0", post="slim"),

    # Ultralytics YOLO, their exporter
    "yolo_v8n_320": _yolo("yolo_v8n_320", "yolov8n.yaml", 320, simplify=False),
    "yolo_v8n_640_simplify": _yolo("yolo_v8n_640_simplify", "yolov8n.yaml", 640, simplify=True),
    "yolo_11n_320_simplify": _yolo("yolo_11n_320_simplify", "yolo11n.yaml", 320, simplify=True),
    "yolo_11n_320_dynamic": _yolo("yolo_11n_320_dynamic", "yolo11n.yaml", 320, simplify=True, dynamic=True),
    "yolo_v8n_seg_320": _yolo("yolo_v8n_seg_320", "yolov8n-seg.yaml", 320, simplify=True),
    "yolo_11n_cls_224": _yolo("yolo_11n_cls_224", "yolo11n-cls.yaml", 224, simplify=True),
}

if __name__ == "__main__":
    common.main(BUILDERS)
