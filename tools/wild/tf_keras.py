"""Wild corpus, family tf_keras: Keras (2.x, tf.keras) models converted by tf2onnx.

TensorFlow 2.15 is the last release whose tf.keras is Keras 2 out of the box, and tf2onnx
1.16.1 is the release made for it (tf2onnx 1.17 with Keras 3 / TF 2.16+ needs the tf_keras
shim). Every model is built from keras.applications or layer code with random initialisation
(weights=None; no hub access), given non-trivial BatchNormalization moving statistics and
gamma/beta, LayerNormalization gamma/beta and non-zero biases (except models named *_fresh,
which keep Keras' default initialisation), then converted with tf2onnx.convert.from_keras
straight to a file, as a user would; the file is not touched afterwards. Inputs stay NHWC as
Keras has them (tf2onnx inserts Transposes around every Conv) unless the export passes
inputs_as_nchw, which tf2onnx implements by a Transpose at the graph input.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

REQUIREMENTS = ["tensorflow-cpu==2.15.1", "tf2onnx==1.16.1", "numpy<2"]

TF2ONNX = "tf2onnx 1.16.1 (tensorflow-cpu 2.15.1, tf.keras 2.15) from_keras"


# --- helpers ------------------------------------------------------------------------------

def _tf():
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


_TF = None


def tf_mod():
    global _TF
    if _TF is None:
        _TF = _tf()
    return _TF


def randomize_keras(model, seed: int = 0, biases: bool = True) -> None:
    """The Keras equivalent of common.randomize_norms_torch: BatchNormalization moving
    mean/variance and gamma/beta, LayerNormalization gamma/beta, ConvNeXt LayerScale gamma
    and (biases=True) every Dense / Conv / EinsumDense bias get distinct non-trivial values,
    so no normalization is an identity and no two tensors are equal (tf2onnx merges equal
    constants)."""
    tf = tf_mod()
    rng = np.random.default_rng(seed)
    seen = set()
    for layer in model.submodules:
        if id(layer) in seen or not isinstance(layer, tf.keras.layers.Layer):
            continue
        seen.add(id(layer))
        name = type(layer).__name__
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            n = layer.moving_mean.shape
            layer.moving_mean.assign((rng.standard_normal(n) * 0.1).astype(np.float32))
            layer.moving_variance.assign((rng.random(n) * 0.5 + 0.75).astype(np.float32))
        if isinstance(layer, (tf.keras.layers.BatchNormalization, tf.keras.layers.LayerNormalization)):
            if getattr(layer, "gamma", None) is not None:
                layer.gamma.assign((1.0 + rng.standard_normal(layer.gamma.shape) * 0.1).astype(np.float32))
            if getattr(layer, "beta", None) is not None:
                layer.beta.assign((rng.standard_normal(layer.beta.shape) * 0.1).astype(np.float32))
        elif name == "LayerScale":
            g = layer.gamma
            g.assign((0.1 + rng.random(g.shape) * 0.4).astype(np.float32))
        elif biases and getattr(layer, "bias", None) is not None and hasattr(layer.bias, "assign"):
            layer.bias.assign((rng.standard_normal(layer.bias.shape) * 0.02).astype(np.float32))


def convert(model, out: Path, name: str, signature, opset: int = 13, **kwargs) -> list[str]:
    """tf2onnx.convert.from_keras straight to out/<name>.onnx; returns the graph's input names."""
    import onnx
    import tf2onnx
    path = out / f"{name}.onnx"
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(path), **kwargs)
    graph = onnx.load(str(path), load_external_data=False).graph
    left = Counter(n.op_type for n in graph.node if not onnx.defs.has(n.op_type, n.domain or ""))
    if left:  # tf2onnx writes TF ops it could not convert into the ONNX domain: not a model
        path.unlink()
        raise RuntimeError("tf2onnx left TensorFlow ops unconverted: "
                           + ", ".join(f"{op} x{k}" for op, k in left.items()))
    inits = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def graph_notes(path: Path) -> str:
    """A factual summary of what tf2onnx left in the graph (for the manifest notes)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    ops = Counter(n.op_type for n in g.node)
    parts = []
    for op in ("Transpose", "Pad", "BatchNormalization", "LayerNormalization", "MatMul", "Einsum",
               "Reshape", "Squeeze", "Unsqueeze", "Shape", "Gather", "Slice", "Concat", "Where", "Erf"):
        if ops.get(op):
            parts.append(f"{op}x{ops[op]}")
    autopad = Counter()
    explicit = 0
    for n in g.node:
        if n.op_type in ("Conv", "MaxPool", "AveragePool"):
            for a in n.attribute:
                if a.name == "auto_pad":
                    autopad[a.s.decode()] += 1
                if a.name == "pads" and any(a.ints):
                    explicit += 1
    if autopad:
        parts.append("auto_pad " + ",".join(f"{k}x{v}" for k, v in sorted(autopad.items())))
    if explicit:
        parts.append(f"explicit-pads x{explicit}")
    uses = Counter()
    inits = {i.name for i in g.initializer}
    for n in g.node:
        for i in n.input:
            if i in inits:
                uses[i] += 1
    shared = sum(1 for v in uses.values() if v > 1)
    if shared:
        parts.append(f"{shared} initializers shared by >1 node (max {max(uses.values())})")
    domains = sorted({n.domain for n in g.node if n.domain})
    if domains:
        parts.append("domains " + ",".join(domains))
    return "; ".join(parts)


def image(shape, low=-1.0, high=1.0, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def exporter_desc(opset: int, extra: str = "") -> str:
    return f"{TF2ONNX} opset {opset}" + (f" {extra}" if extra else "")


# --- keras.applications -------------------------------------------------------------------

def _app(out: Path, name: str, ctor, size: int, *, opset=13, low=-1.0, high=1.0, fresh=False,
         dyn_batch=False, dyn_hw=False, nchw=False, note="", source=None, **ctor_kwargs) -> common.Built:
    tf = tf_mod()
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    model = ctor(weights=None, input_shape=(size, size, 3), **ctor_kwargs)
    if not fresh:
        randomize_keras(model)
    batch = None if dyn_batch else 1
    hw = None if dyn_hw else size
    spec = (tf.TensorSpec((batch, hw, hw, 3), tf.float32, name="input"),)
    kwargs = {"inputs_as_nchw": ["input"]} if nchw else {}
    names = convert(model, out, name, spec, opset=opset, **kwargs)
    shape = (1, 3, size, size) if nchw else (1, size, size, 3)
    extra = []
    if dyn_batch:
        extra.append("dynamic batch")
    if dyn_hw:
        extra.append("dynamic H,W")
    if nchw:
        extra.append("inputs_as_nchw")
    notes = f"{size}px {'NCHW' if nchw else 'NHWC'} input; " + graph_notes(out / f"{name}.onnx")
    if note:
        notes = note + "; " + notes
    return common.Built(inputs={names[0]: image(shape, low, high)},
                        source=source or f"keras.applications.{ctor.__name__} (tf.keras 2.15), weights=None",
                        exporter=exporter_desc(opset, ", ".join(extra)), kind="cnn", notes=notes)


def apps():
    return tf_mod().keras.applications


def tf_mobilenet_v1_a050(out: Path) -> common.Built:
    return _app(out, "tf_mobilenet_v1_a050", apps().MobileNet, 128, alpha=0.5,
                note="alpha 0.5; ZeroPadding2D before strided depthwise convs, Reshape+Conv1x1 head")


def tf_mobilenet_v2_a050(out: Path) -> common.Built:
    return _app(out, "tf_mobilenet_v2_a050", apps().MobileNetV2, 128, alpha=0.5,
                note="alpha 0.5; ReLU6 (Clip), ZeroPadding2D before strided depthwise")


def tf_mobilenet_v2_a050_fresh(out: Path) -> common.Built:
    return _app(out, "tf_mobilenet_v2_a050_fresh", apps().MobileNetV2, 128, alpha=0.5, fresh=True,
                note="Keras default init untouched (BN gamma=1 beta=0 mean=0 var=1)")


def tf_mobilenet_v2_a050_nchw_dyn(out: Path) -> common.Built:
    return _app(out, "tf_mobilenet_v2_a050_nchw_dyn", apps().MobileNetV2, 128, alpha=0.5, opset=17,
                dyn_batch=True, nchw=True, note="alpha 0.5; tf2onnx --inputs-as-nchw, dynamic batch")


def tf_mobilenet_v2_a050_dynhw(out: Path) -> common.Built:
    return _app(out, "tf_mobilenet_v2_a050_dynhw", apps().MobileNetV2, 128, alpha=0.5, opset=13,
                dyn_batch=True, dyn_hw=True,
                note="alpha 0.5; input (N,H,W,3) all dynamic, so 'same' padding cannot be folded")


def tf_mobilenet_v3_small(out: Path) -> common.Built:
    return _app(out, "tf_mobilenet_v3_small", apps().MobileNetV3Small, 128, low=0.0, high=255.0,
                note="alpha 1.0, Rescaling inside, hard-swish/hard-sigmoid as Mul/Add/Relu6, SE blocks")


def tf_efficientnet_b0(out: Path) -> common.Built:
    return _app(out, "tf_efficientnet_b0", apps().EfficientNetB0, 128, low=0.0, high=255.0,
                note="Rescaling+Normalization layers inside, swish (Sigmoid*Mul), SE blocks")


def tf_efficientnetv2_b0(out: Path) -> common.Built:
    return _app(out, "tf_efficientnetv2_b0", apps().EfficientNetV2B0, 128, low=0.0, high=255.0, opset=17,
                note="fused-MBConv stages, Rescaling inside (include_preprocessing)")


def tf_nasnet_mobile(out: Path) -> common.Built:
    return _app(out, "tf_nasnet_mobile", apps().NASNetMobile, 128,
                note="NASNet cells: separable convs, Cropping2D+ZeroPadding2D shift paths, many Concats")


def tf_densenet121(out: Path) -> common.Built:
    return _app(out, "tf_densenet121", apps().DenseNet121, 96, low=-2.0, high=2.0,
                note="dense blocks: Concat feeding BN-ReLU-Conv (BN not foldable into the previous conv)")


def tf_resnet50(out: Path) -> common.Built:
    return _app(out, "tf_resnet50", apps().ResNet50, 112, low=-120.0, high=150.0,
                note="caffe-style input range; ZeroPadding2D layers")


def tf_resnet50v2(out: Path) -> common.Built:
    return _app(out, "tf_resnet50v2", apps().ResNet50V2, 112, opset=17,
                note="pre-activation: BN-ReLU before convs, stride on the last conv of a block")


def tf_inception_v3(out: Path) -> common.Built:
    return _app(out, "tf_inception_v3", apps().InceptionV3, 107,
                note="'valid' and 'same' convs mixed, 1x7/7x1 factorised convs, Concat branches, BN scale=False")


def tf_convnext_tiny(out: Path) -> common.Built:
    """Fails with tf2onnx 1.16.1: Keras runs grouped (depthwise) Conv2D through a jit-compiled
    tf.function, which tf2onnx leaves as PartitionedCall nodes; kept so the manifest says so."""
    return _app(out, "tf_convnext_tiny", apps().ConvNeXtTiny, 64, low=0.0, high=255.0, opset=17,
                note="Normalization inside, depthwise 7x7, LayerNormalization over channels (NHWC), "
                     "LayerScale (gamma randomised), Dense MLPs on NHWC")


# --- hand-built Keras models --------------------------------------------------------------

def _keras():
    return tf_mod().keras


def _transformer_block(x, d, heads, ff, mask=None, pre_ln=False, prefix="block"):
    L = _keras().layers
    attn = L.MultiHeadAttention(num_heads=heads, key_dim=d // heads, dropout=0.1, name=f"{prefix}_mha")
    if pre_ln:
        h = L.LayerNormalization(epsilon=1e-6, name=f"{prefix}_ln1")(x)
        h = attn(h, h, attention_mask=mask)
        x = L.Add(name=f"{prefix}_add1")([x, h])
        h = L.LayerNormalization(epsilon=1e-6, name=f"{prefix}_ln2")(x)
        h = L.Dense(ff, activation="gelu", name=f"{prefix}_fc1")(h)
        h = L.Dropout(0.1)(h)
        h = L.Dense(d, name=f"{prefix}_fc2")(h)
        return L.Add(name=f"{prefix}_add2")([x, h])
    h = attn(x, x, attention_mask=mask)
    h = L.Dropout(0.1)(h)
    x = L.LayerNormalization(epsilon=1e-12, name=f"{prefix}_ln1")(L.Add(name=f"{prefix}_add1")([x, h]))
    h = L.Dense(ff, activation="gelu", name=f"{prefix}_fc1")(x)
    h = L.Dense(d, name=f"{prefix}_fc2")(h)
    h = L.Dropout(0.1)(h)
    return L.LayerNormalization(epsilon=1e-12, name=f"{prefix}_ln2")(L.Add(name=f"{prefix}_add2")([x, h]))


def _text_transformer(out: Path, name: str, opset: int, fresh: bool, dyn: bool) -> common.Built:
    tf = tf_mod()
    keras = _keras()
    L = keras.layers
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    vocab, types, seq, d, heads, ff, layers = 1000, 2, 32, 128, 4, 256, 2

    class PositionEmbedding(L.Layer):
        def build(self, shape):
            self.pos = self.add_weight(name="embeddings", shape=(512, shape[-1]),
                                       initializer=keras.initializers.TruncatedNormal(stddev=0.02))

        def call(self, x):
            return x + self.pos[None, : tf.shape(x)[1]]

    ids = keras.Input((None,), dtype="int32", name="input_ids")
    mask = keras.Input((None,), dtype="int32", name="attention_mask")
    type_ids = keras.Input((None,), dtype="int32", name="token_type_ids")
    x = L.Embedding(vocab, d, name="word_embeddings")(ids)
    x = L.Add(name="emb_add")([x, L.Embedding(types, d, name="token_type_embeddings")(type_ids)])
    x = PositionEmbedding(name="position_embeddings")(x)
    x = L.LayerNormalization(epsilon=1e-12, name="emb_ln")(x)
    x = L.Dropout(0.1)(x)
    attn_mask = L.Lambda(lambda m: tf.cast(m[:, None, :], tf.bool), name="attn_mask")(mask)
    for i in range(layers):
        x = _transformer_block(x, d, heads, ff, mask=attn_mask, prefix=f"layer{i}")
    cls = L.Lambda(lambda t: t[:, 0], name="cls")(x)
    pooled = L.Dense(d, activation="tanh", name="pooler")(cls)
    logits = L.Dense(3, name="classifier")(pooled)
    model = keras.Model([ids, mask, type_ids], logits, name=name)
    if not fresh:
        randomize_keras(model)
    b = None if dyn else 1
    s = None if dyn else seq
    spec = [tf.TensorSpec((b, s), tf.int32, name=n) for n in ("input_ids", "attention_mask", "token_type_ids")]
    names = convert(model, out, name, spec, opset=opset)
    rng = np.random.default_rng(0)
    sample = {"input_ids": rng.integers(1, vocab, size=(1, seq)).astype(np.int32),
              "attention_mask": np.ones((1, seq), np.int32),
              "token_type_ids": np.zeros((1, seq), np.int32)}
    sample["attention_mask"][0, -5:] = 0
    sample["token_type_ids"][0, seq // 2:] = 1
    assert set(names) == set(sample), names
    notes = (f"BERT-style post-LN encoder: {layers} layers, d={d}, {heads} heads (keras MultiHeadAttention, "
             f"EinsumDense q/k/v/o with (d, heads, head_dim) kernels), GELU(erf) MLP {ff}, int32 inputs, "
             f"mask via Lambda cast; " + graph_notes(out / f"{name}.onnx"))
    return common.Built(inputs=sample, source="hand-built tf.keras BERT-like encoder (MultiHeadAttention)",
                        exporter=exporter_desc(opset, "dynamic batch+seq" if dyn else ""),
                        kind="transformer", notes=notes)


def tf_text_transformer(out: Path) -> common.Built:
    return _text_transformer(out, "tf_text_transformer", 13, fresh=False, dyn=False)


def tf_text_transformer_o17_dyn(out: Path) -> common.Built:
    return _text_transformer(out, "tf_text_transformer_o17_dyn", 17, fresh=False, dyn=True)


def tf_text_transformer_fresh(out: Path) -> common.Built:
    return _text_transformer(out, "tf_text_transformer_fresh", 13, fresh=True, dyn=False)


def tf_vit_tiny(out: Path) -> common.Built:
    tf = tf_mod()
    keras = _keras()
    L = keras.layers
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    size, patch, d, heads, ff, layers, classes = 64, 8, 96, 4, 192, 2, 10
    n = (size // patch) ** 2

    class ClassTokenPos(L.Layer):
        def build(self, shape):
            self.cls = self.add_weight(name="cls", shape=(1, 1, shape[-1]),
                                       initializer=keras.initializers.RandomNormal(stddev=0.02))
            self.pos = self.add_weight(name="pos", shape=(1, n + 1, shape[-1]),
                                       initializer=keras.initializers.RandomNormal(stddev=0.02))

        def call(self, x):
            cls = tf.tile(self.cls, [tf.shape(x)[0], 1, 1])
            return tf.concat([cls, x], axis=1) + self.pos

    inp = keras.Input((size, size, 3), name="pixel_values")
    x = L.Conv2D(d, patch, strides=patch, name="patch_embed")(inp)
    x = L.Reshape((n, d), name="flatten_patches")(x)
    x = ClassTokenPos(name="cls_pos")(x)
    for i in range(layers):
        x = _transformer_block(x, d, heads, ff, pre_ln=True, prefix=f"block{i}")
    x = L.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = L.Lambda(lambda t: t[:, 0], name="cls_out")(x)
    logits = L.Dense(classes, name="head")(x)
    model = keras.Model(inp, logits, name="vit_tiny")
    randomize_keras(model)
    opset = 17
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="pixel_values"),)
    names = convert(model, out, "tf_vit_tiny", spec, opset=opset)
    notes = (f"pre-LN ViT: {size}px NHWC, patch {patch} Conv2D, {layers} blocks d={d} {heads} heads "
             f"(keras MultiHeadAttention), GELU MLP {ff}, cls token via Tile+Concat; "
             + graph_notes(out / "tf_vit_tiny.onnx"))
    return common.Built(inputs={names[0]: image((1, size, size, 3))},
                        source="hand-built tf.keras ViT (MultiHeadAttention)",
                        exporter=exporter_desc(opset, "dynamic batch"), kind="transformer", notes=notes)


def tf_mlp(out: Path) -> common.Built:
    tf = tf_mod()
    keras = _keras()
    L = keras.layers
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,), name="features")
    x = L.Dense(256, activation="relu", name="fc1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Dropout(0.2)(x)
    x = L.Dense(128, name="fc2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Activation("relu")(x)
    x = L.Dense(64, activation="swish", name="fc3")(x)
    out_ = L.Dense(10, activation="softmax", name="out")(x)
    model = keras.Model(inp, out_, name="mlp")
    randomize_keras(model)
    names = convert(model, out, "tf_mlp", (tf.TensorSpec((None, 64), tf.float32, name="features"),), opset=13)
    notes = ("Dense(relu)-BN-Dropout-Dense-BN-ReLU-Dense(swish)-Dense(softmax), BN after Dense (1-D BN); "
             + graph_notes(out / "tf_mlp.onnx"))
    return common.Built(inputs={names[0]: np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)},
                        source="hand-built tf.keras MLP", exporter=exporter_desc(13, "dynamic batch"),
                        kind="mlp", notes=notes)


def tf_conv1d_text(out: Path) -> common.Built:
    tf = tf_mod()
    keras = _keras()
    L = keras.layers
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    vocab, seq = 5000, 64
    inp = keras.Input((seq,), dtype="int32", name="tokens")
    x = L.Embedding(vocab, 64, name="embedding")(inp)
    x = L.Conv1D(128, 5, padding="same", activation="relu", name="conv1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.MaxPooling1D(2, name="pool1")(x)
    x = L.Conv1D(128, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.Conv1D(96, 3, padding="valid", dilation_rate=2, activation="relu", name="conv3")(x)
    x = L.GlobalMaxPooling1D(name="gmp")(x)
    x = L.Dense(64, activation="relu", name="fc")(x)
    x = L.Dropout(0.3)(x)
    out_ = L.Dense(2, activation="softmax", name="out")(x)
    model = keras.Model(inp, out_, name="conv1d_text")
    randomize_keras(model)
    names = convert(model, out, "tf_conv1d_text", (tf.TensorSpec((1, seq), tf.int32, name="tokens"),), opset=13)
    notes = ("Embedding(5000,64)-Conv1D(same)-BN-MaxPool1D-Conv1D(same)-Conv1D(dilated, valid)-GlobalMaxPool-"
             "Dense-Dense(softmax); " + graph_notes(out / "tf_conv1d_text.onnx"))
    sample = np.random.default_rng(0).integers(1, vocab, size=(1, seq)).astype(np.int32)
    return common.Built(inputs={names[0]: sample}, source="hand-built tf.keras Conv1D text classifier",
                        exporter=exporter_desc(13), kind="other", notes=notes)


BUILDERS = {
    "tf_mobilenet_v2_a050": tf_mobilenet_v2_a050,
    "tf_resnet50": tf_resnet50,
    "tf_text_transformer": tf_text_transformer,
    "tf_vit_tiny": tf_vit_tiny,
    "tf_mlp": tf_mlp,
    "tf_conv1d_text": tf_conv1d_text,
    "tf_mobilenet_v1_a050": tf_mobilenet_v1_a050,
    "tf_mobilenet_v3_small": tf_mobilenet_v3_small,
    "tf_efficientnet_b0": tf_efficientnet_b0,
    "tf_efficientnetv2_b0": tf_efficientnetv2_b0,
    "tf_densenet121": tf_densenet121,
    "tf_resnet50v2": tf_resnet50v2,
    "tf_inception_v3": tf_inception_v3,
    "tf_nasnet_mobile": tf_nasnet_mobile,
    "tf_convnext_tiny": tf_convnext_tiny,
    "tf_mobilenet_v2_a050_fresh": tf_mobilenet_v2_a050_fresh,
    "tf_mobilenet_v2_a050_nchw_dyn": tf_mobilenet_v2_a050_nchw_dyn,
    "tf_mobilenet_v2_a050_dynhw": tf_mobilenet_v2_a050_dynhw,
    "tf_text_transformer_o17_dyn": tf_text_transformer_o17_dyn,
    "tf_text_transformer_fresh": tf_text_transformer_fresh,
}

if __name__ == "__main__":
    common.main(BUILDERS)
