"""Wild corpus, family jax_flax: JAX / Flax (nnx and linen) models exported by jax2onnx.

Every model is built from its architecture code with random initialisation (no hub access),
then handed to jax2onnx.to_onnx(..., return_mode="file") exactly as a user would; the file
is not touched afterwards. Images are NHWC (JAX's layout) unless the export asks jax2onnx
for an NCHW input (inputs_as_nchw). Some models come from jax2onnx's own example
components (jax2onnx/plugins/examples), which wrap submodules in @onnx_function, so the
export holds ONNX local functions in a custom domain.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

REQUIREMENTS = ["jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "jax2onnx==0.17.1"]

JAX2ONNX = "jax2onnx 0.17.1"


# --- helpers ------------------------------------------------------------------------------

def _nnx():
    from flax import nnx
    return nnx


def randomize_norms_nnx(model, seed: int = 0) -> None:
    """Non-trivial BatchNorm running statistics and affine parameters, and LayerNorm /
    GroupNorm / RMSNorm scale and bias, so no normalization is an identity (the nnx
    equivalent of common.randomize_norms_torch). Hand-written norms (a Param named
    `ln_scale` / `ln_bias`) are randomized too."""
    import jax.numpy as jnp
    nnx = _nnx()
    rng = np.random.default_rng(seed)

    def rnd(shape, base, scale=0.1):
        return jnp.asarray(base + rng.standard_normal(shape) * scale, dtype=jnp.float32)

    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            shape = node.mean[...].shape
            node.mean[...] = rnd(shape, 0.0)
            node.var[...] = jnp.asarray(rng.random(shape) * 0.5 + 0.75, dtype=jnp.float32)
        if isinstance(node, (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)):
            if getattr(node, "scale", None) is not None:
                node.scale[...] = rnd(node.scale[...].shape, 1.0)
            if getattr(node, "bias", None) is not None:
                node.bias[...] = rnd(node.bias[...].shape, 0.0)
        for attr, base in (("ln_scale", 1.0), ("ln_bias", 0.0)):
            p = getattr(node, attr, None)
            if isinstance(p, nnx.Param):
                p[...] = rnd(p[...].shape, base)


def export(model, out: Path, name: str, specs, **kwargs) -> list[str]:
    """jax2onnx.to_onnx straight to out/<name>.onnx; returns the graph's input names."""
    import onnx
    from jax2onnx import to_onnx
    path = out / f"{name}.onnx"
    to_onnx(model, specs, model_name=name, return_mode="file", output_path=str(path), **kwargs)
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)


def exporter_desc(opset: int = 23, extra: str = "") -> str:
    return f"{JAX2ONNX} opset {opset}" + (f" {extra}" if extra else "")


# --- architectures ------------------------------------------------------------------------

def _resnet_classes():
    import jax.numpy as jnp
    nnx = _nnx()

    class BasicBlock(nnx.Module):
        def __init__(self, cin, cout, stride, *, rngs):
            self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
            self.bn1 = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
            self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
            self.bn2 = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
            if stride != 1 or cin != cout:
                self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
                self.proj_bn = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
            else:
                self.proj = None
                self.proj_bn = None

        def __call__(self, x):
            y = nnx.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            skip = x if self.proj is None else self.proj_bn(self.proj(x))
            return nnx.relu(y + skip)

    class ResNet(nnx.Module):
        """ResNet-18-like at reduced width: stem conv 7x7/2 + BN + ReLU + max pool, four stages
        of two basic blocks, global average pooling, Dense head."""

        def __init__(self, widths=(32, 64, 128, 256), blocks=(2, 2, 2, 2), num_classes=10, *, rngs):
            self.stem = nnx.Conv(3, widths[0], (7, 7), strides=2, use_bias=False, rngs=rngs)
            self.stem_bn = nnx.BatchNorm(widths[0], use_running_average=True, rngs=rngs)
            layers = []
            cin = widths[0]
            for i, (w, n) in enumerate(zip(widths, blocks)):
                for j in range(n):
                    layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, rngs=rngs))
                    cin = w
            self.layers = nnx.List(layers) if hasattr(nnx, "List") else layers
            self.head = nnx.Linear(cin, num_classes, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.stem_bn(self.stem(x)))
            x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
            for layer in self.layers:
                x = layer(x)
            x = jnp.mean(x, axis=(1, 2))
            return self.head(x)

    return ResNet


# jax2onnx 0.17.1 writes a ResNet-18 layout (two basic blocks per stage) that onnxruntime
# refuses: after its transpose-removal pass, the tensors between an identity block and the next
# stage keep their old NHWC value_info shapes while the nodes now compute NCHW, so shape
# inference fails on an Add ([1,64,8,8] + [1,8,8,64]). jax_resnet18 keeps that export as it is
# (recorded as a failed build); the other ResNets use blocks (1,1,1,2), which export cleanly and
# still have identity residual blocks (first and last stage).
RESNET_OK_BLOCKS = (1, 1, 1, 2)


def build_resnet18(out: Path) -> common.Built:
    nnx = _nnx()
    model = _resnet_classes()(blocks=(2, 2, 2, 2), rngs=nnx.Rngs(0))
    randomize_norms_nnx(model, seed=1)
    names = export(model, out, "jax_resnet18", [(1, 64, 64, 3)])
    return common.Built(
        inputs={names[0]: image((1, 64, 64, 3))},
        source="flax.nnx ResNet-18-like (BasicBlock x (2,2,2,2), widths 32-256), written here",
        exporter=exporter_desc(), kind="cnn",
        notes="jax2onnx leaves stale NHWC value_info on NCHW tensors whose transposes it removed; "
              "here two of them meet in an Add, so onnxruntime rejects the file (exporter bug)")


def build_resnet(out: Path) -> common.Built:
    nnx = _nnx()
    model = _resnet_classes()(blocks=RESNET_OK_BLOCKS, rngs=nnx.Rngs(0))
    randomize_norms_nnx(model, seed=1)
    names = export(model, out, "jax_resnet", [(1, 64, 64, 3)])
    return common.Built(
        inputs={names[0]: image((1, 64, 64, 3))},
        source="flax.nnx ResNet-like (BasicBlock x (1,1,1,2), widths 32-256), written here",
        exporter=exporter_desc(), kind="cnn",
        notes="NHWC input (Transpose at entry); nnx.Conv padding='SAME' exported as auto_pad=SAME_UPPER; "
              "BatchNorm with random running stats; last stage keeps NHWC Transposes around its Adds; "
              "stale NHWC value_info on NCHW Relu/Add outputs (fails onnx.checker full_check, "
              "onnxruntime loads it); initializers >= 1 MB spilled to jax_resnet.onnx.data")


def build_resnet_nchw_dyn(out: Path) -> common.Built:
    nnx = _nnx()
    model = _resnet_classes()(blocks=RESNET_OK_BLOCKS, rngs=nnx.Rngs(2))
    randomize_norms_nnx(model, seed=3)
    names = export(model, out, "jax_resnet_nchw_dyn", [("B", 64, 64, 3)], inputs_as_nchw=[0])
    return common.Built(
        inputs={names[0]: image((2, 3, 64, 64))},
        source="flax.nnx ResNet-like (BasicBlock x (1,1,1,2), widths 32-256), written here",
        exporter=exporter_desc(extra="inputs_as_nchw=[0], dynamic batch 'B'"), kind="cnn",
        notes="same architecture as jax_resnet, NCHW input 'in_0_nchw' (no entry Transpose), "
              "symbolic batch dim B, sample batch 2; stale value_info and .onnx.data as jax_resnet")


def build_resnet_fresh(out: Path) -> common.Built:
    nnx = _nnx()
    model = _resnet_classes()(blocks=RESNET_OK_BLOCKS, rngs=nnx.Rngs(4))
    names = export(model, out, "jax_resnet_fresh", [(1, 64, 64, 3)])
    return common.Built(
        inputs={names[0]: image((1, 64, 64, 3))},
        source="flax.nnx ResNet-like (BasicBlock x (1,1,1,2), widths 32-256), written here",
        exporter=exporter_desc(), kind="cnn",
        notes="flax default init untouched: BatchNorm mean 0 / var 1 / scale 1 / bias 0, "
              "Dense bias 0; jax2onnx does not deduplicate the equal tensors (48 initializers "
              "share bytes with another)")


def build_mobilenet(out: Path) -> common.Built:
    import jax.numpy as jnp
    nnx = _nnx()

    def relu6(x):
        return jnp.minimum(jnp.maximum(x, 0.0), 6.0)

    class InvertedResidual(nnx.Module):
        def __init__(self, cin, cout, stride, expand, *, rngs):
            hidden = cin * expand
            if expand != 1:
                self.expand = nnx.Conv(cin, hidden, (1, 1), use_bias=False, rngs=rngs)
                self.expand_bn = nnx.BatchNorm(hidden, use_running_average=True, rngs=rngs)
            else:
                self.expand = None
            self.dw = nnx.Conv(hidden, hidden, (3, 3), strides=stride, feature_group_count=hidden,
                               use_bias=False, rngs=rngs)
            self.dw_bn = nnx.BatchNorm(hidden, use_running_average=True, rngs=rngs)
            self.project = nnx.Conv(hidden, cout, (1, 1), use_bias=False, rngs=rngs)
            self.project_bn = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
            self.residual = stride == 1 and cin == cout

        def __call__(self, x):
            y = x
            if self.expand is not None:
                y = relu6(self.expand_bn(self.expand(y)))
            y = relu6(self.dw_bn(self.dw(y)))
            y = self.project_bn(self.project(y))
            return x + y if self.residual else y

    class MobileNetV2(nnx.Module):
        """MobileNetV2-like (width 0.5): stem, inverted residual blocks with depthwise convs
        (feature_group_count = channels), ReLU6 as clip via jnp.minimum/maximum."""

        def __init__(self, num_classes=10, *, rngs):
            cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1), (6, 160, 1, 2)]
            self.stem = nnx.Conv(3, 32, (3, 3), strides=2, use_bias=False, rngs=rngs)
            self.stem_bn = nnx.BatchNorm(32, use_running_average=True, rngs=rngs)
            blocks, cin = [], 32
            for t, c, n, s in cfg:
                for i in range(n):
                    blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t, rngs=rngs))
                    cin = c
            self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks
            self.last = nnx.Conv(cin, 640, (1, 1), use_bias=False, rngs=rngs)
            self.last_bn = nnx.BatchNorm(640, use_running_average=True, rngs=rngs)
            self.head = nnx.Linear(640, num_classes, rngs=rngs)

        def __call__(self, x):
            x = relu6(self.stem_bn(self.stem(x)))
            for b in self.blocks:
                x = b(x)
            x = relu6(self.last_bn(self.last(x)))
            return self.head(jnp.mean(x, axis=(1, 2)))

    model = MobileNetV2(rngs=nnx.Rngs(5))
    randomize_norms_nnx(model, seed=6)
    names = export(model, out, "jax_mobilenet", [(1, 96, 96, 3)])
    return common.Built(
        inputs={names[0]: image((1, 96, 96, 3))},
        source="flax.nnx MobileNetV2-like (inverted residuals, depthwise via feature_group_count), "
               "written here",
        exporter=exporter_desc(), kind="cnn",
        notes="NHWC input; depthwise Conv group=C; ReLU6 written as jnp.minimum(jnp.maximum(x,0),6) "
              "-> Max/Min with scalar initializers; auto_pad=SAME_UPPER; stale NHWC value_info "
              "(fails onnx.checker full_check)")


def _mlp_classes():
    import jax
    import jax.numpy as jnp
    nnx = _nnx()

    class HandLayerNorm(nnx.Module):
        """LayerNorm written out in jax.numpy: mean, variance, rsqrt."""

        def __init__(self, dim, eps=1e-5):
            self.ln_scale = nnx.Param(jnp.ones((dim,), jnp.float32))
            self.ln_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
            self.eps = eps

        def __call__(self, x):
            mean = jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
            return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.ln_scale[...] + self.ln_bias[...]

    class MLP(nnx.Module):
        """Linear -> LayerNorm -> GELU blocks, then a Dense head."""

        def __init__(self, din=64, hidden=(256, 256, 128), num_classes=10, hand_ln=False, *, rngs):
            layers, norms, cin = [], [], din
            for h in hidden:
                layers.append(nnx.Linear(cin, h, rngs=rngs))
                norms.append(HandLayerNorm(h) if hand_ln else nnx.LayerNorm(h, rngs=rngs))
                cin = h
            listify = nnx.List if hasattr(nnx, "List") else list
            self.layers, self.norms = listify(layers), listify(norms)
            self.head = nnx.Linear(cin, num_classes, rngs=rngs)

        def __call__(self, x):
            for lin, ln in zip(self.layers, self.norms):
                x = nnx.gelu(ln(lin(x)))
            return self.head(x)

    return MLP


def build_mlp_handln(out: Path) -> common.Built:
    nnx = _nnx()
    model = _mlp_classes()(hand_ln=True, rngs=nnx.Rngs(7))
    randomize_norms_nnx(model, seed=8)
    names = export(model, out, "jax_mlp_handln", [(1, 64)])
    return common.Built(
        inputs={names[0]: image((1, 64), seed=1)},
        source="flax.nnx MLP 64-256-256-128-10 with LayerNorm hand-written in jax.numpy, written here",
        exporter=exporter_desc(), kind="mlp",
        notes="hand-written LayerNorm after each hidden Linear: ReduceMean, Sub, Mul (square), "
              "ReduceMean, Add eps, Sqrt, Div (1/x), Mul, Mul scale [1,C], Add bias [1,C]; "
              "Gelu op approximate=tanh")


def build_mlp_nnxln(out: Path) -> common.Built:
    nnx = _nnx()
    model = _mlp_classes()(hand_ln=False, rngs=nnx.Rngs(9))
    randomize_norms_nnx(model, seed=10)
    names = export(model, out, "jax_mlp_nnxln", [("B", 64)])
    return common.Built(
        inputs={names[0]: image((3, 64), seed=2)},
        source="flax.nnx MLP 64-256-256-128-10 with nnx.LayerNorm, written here",
        exporter=exporter_desc(extra="normalization_mode=auto, dynamic batch 'B'"), kind="mlp",
        notes="nnx.LayerNorm with jax2onnx's default normalization_mode='auto' comes out "
              "decomposed (ReduceMean, E[x^2]-mean^2, Max 0, Add eps, Sqrt, Div, Mul, Add); "
              "symbolic batch B, sample batch 3")


def build_mlp_nnxln_native(out: Path) -> common.Built:
    nnx = _nnx()
    model = _mlp_classes()(hand_ln=False, rngs=nnx.Rngs(11))
    randomize_norms_nnx(model, seed=12)
    names = export(model, out, "jax_mlp_nnxln_native", [(1, 64)], normalization_mode="prefer_native")
    return common.Built(
        inputs={names[0]: image((1, 64), seed=3)},
        source="flax.nnx MLP 64-256-256-128-10 with nnx.LayerNorm, written here",
        exporter=exporter_desc(extra="normalization_mode=prefer_native"), kind="mlp",
        notes="nnx.LayerNorm requested as native ONNX LayerNormalization")


def _encoder_block_class():
    nnx = _nnx()

    class EncoderBlock(nnx.Module):
        """Pre-LN (vit) or post-LN (bert) transformer block with nnx.MultiHeadAttention."""

        def __init__(self, dim, heads, mlp, pre_ln=True, *, rngs):
            self.pre_ln = pre_ln
            self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, qkv_features=dim,
                                               out_features=dim, decode=False, rngs=rngs)
            self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
            self.fc1 = nnx.Linear(dim, mlp, rngs=rngs)
            self.fc2 = nnx.Linear(mlp, dim, rngs=rngs)

        def __call__(self, x, mask=None):
            if self.pre_ln:
                x = x + self.attn(self.ln1(x), mask=mask, deterministic=True)
                return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x)), approximate=False))
            x = self.ln1(x + self.attn(x, mask=mask, deterministic=True))
            return self.ln2(x + self.fc2(nnx.gelu(self.fc1(x), approximate=False)))

    return EncoderBlock


def build_vit(out: Path) -> common.Built:
    import jax.numpy as jnp
    nnx = _nnx()
    EncoderBlock = _encoder_block_class()

    class ViT(nnx.Module):
        """ViT-like: Conv patch embedding (patch 8), class token, learned position embedding,
        pre-LN encoder blocks with nnx.MultiHeadAttention, final LayerNorm, Dense head."""

        def __init__(self, size=64, patch=8, dim=128, depth=2, heads=4, mlp=256, num_classes=10, *, rngs):
            self.patch = nnx.Conv(3, dim, (patch, patch), strides=patch, padding="VALID", rngs=rngs)
            n = (size // patch) ** 2
            self.cls = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, 1, dim)))
            self.pos = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, n + 1, dim)))
            self.blocks = nnx.List([EncoderBlock(dim, heads, mlp, rngs=rngs) for _ in range(depth)])
            self.norm = nnx.LayerNorm(dim, rngs=rngs)
            self.head = nnx.Linear(dim, num_classes, rngs=rngs)

        def __call__(self, x):
            x = self.patch(x)
            b, h, w, c = x.shape
            x = x.reshape(b, h * w, c)
            x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, c)), x], axis=1)
            x = x + self.pos[...]
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x)[:, 0])

    model = ViT(rngs=nnx.Rngs(13))
    randomize_norms_nnx(model, seed=14)
    names = export(model, out, "jax_vit", [(1, 64, 64, 3)])
    return common.Built(
        inputs={names[0]: image((1, 64, 64, 3), seed=4)},
        source="flax.nnx ViT-like (patch 8 conv embedding, 2 layers, dim 128, 4 heads, mlp 256), written here",
        exporter=exporter_desc(), kind="transformer",
        notes="nnx.MultiHeadAttention: LinearGeneral q/k/v/out kernels folded to 2-D Gemm "
              "(kernel2d_*) between Reshapes to [B*S, D] and [B, S, H, d]; decomposed LayerNorm; "
              "Gelu op; cls token folded into a Concat initializer")


def build_bert(out: Path) -> common.Built:
    import jax.numpy as jnp
    nnx = _nnx()
    EncoderBlock = _encoder_block_class()

    class TextEncoder(nnx.Module):
        """BERT-like: token + position + token-type embeddings, LayerNorm, post-LN encoder
        blocks with a padding mask from attention_mask, pooler (tanh Dense on the first token)."""

        def __init__(self, vocab=1000, types=2, max_len=128, dim=128, depth=2, heads=4, mlp=512, *, rngs):
            self.tok = nnx.Embed(vocab, dim, rngs=rngs)
            self.typ = nnx.Embed(types, dim, rngs=rngs)
            self.pos = nnx.Embed(max_len, dim, rngs=rngs)
            self.ln = nnx.LayerNorm(dim, rngs=rngs)
            self.blocks = nnx.List([EncoderBlock(dim, heads, mlp, pre_ln=False, rngs=rngs) for _ in range(depth)])
            self.pool = nnx.Linear(dim, dim, rngs=rngs)

        def __call__(self, input_ids, attention_mask, token_type_ids):
            s = input_ids.shape[1]
            x = self.tok(input_ids) + self.typ(token_type_ids) + self.pos(jnp.arange(s)[None, :])
            x = self.ln(x)
            mask = nnx.make_attention_mask(attention_mask > 0, attention_mask > 0)
            for blk in self.blocks:
                x = blk(x, mask=mask)
            return x, jnp.tanh(self.pool(x[:, 0]))

    model = TextEncoder(rngs=nnx.Rngs(15))
    randomize_norms_nnx(model, seed=16)
    import jax
    spec = [jax.ShapeDtypeStruct((2, 32), jnp.int32)] * 3
    names = export(model, out, "jax_bert", spec, input_names=["input_ids", "attention_mask", "token_type_ids"])
    rng = np.random.default_rng(5)
    ids = rng.integers(1, 1000, size=(2, 32)).astype(np.int32)
    mask = np.ones((2, 32), np.int32)
    mask[1, 24:] = 0
    types = np.zeros((2, 32), np.int32)
    types[:, 16:] = 1
    sample = dict(zip(["input_ids", "attention_mask", "token_type_ids"], [ids, mask, types]))
    return common.Built(
        inputs={n: sample[n] for n in names},
        source="flax.nnx BERT-like text encoder (vocab 1000, 2 layers, dim 128, 4 heads, mlp 512), written here",
        exporter=exporter_desc(), kind="transformer",
        notes="int32 inputs, batch 2 x seq 32; nnx.Embed gathers; padding mask via "
              "nnx.make_attention_mask exported as Softmax -> Mul(mask) -> ReduceSum -> Greater/Where "
              "-> Div -> Where (renormalized masked softmax); post-LN blocks; two outputs "
              "(sequence, tanh pooler)")


def build_groupnorm(out: Path) -> common.Built:
    import jax.numpy as jnp
    nnx = _nnx()

    class ResBlock(nnx.Module):
        def __init__(self, cin, cout, *, rngs):
            self.norm1 = nnx.GroupNorm(cin, num_groups=8, rngs=rngs)
            self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
            self.norm2 = nnx.GroupNorm(cout, num_groups=8, rngs=rngs)
            self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
            self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

        def __call__(self, x):
            h = self.conv1(nnx.silu(self.norm1(x)))
            h = self.conv2(nnx.silu(self.norm2(h)))
            return h + (x if self.skip is None else self.skip(x))

    class GNNet(nnx.Module):
        """UNet-encoder-like CNN: conv stem, GroupNorm(8) + SiLU residual blocks (pre-norm,
        diffusion-UNet style), strided-conv downsampling, GroupNorm, mean pool, Dense head."""

        def __init__(self, widths=(32, 64, 128), num_classes=10, *, rngs):
            self.stem = nnx.Conv(3, widths[0], (3, 3), rngs=rngs)
            blocks, downs, cin = [], [], widths[0]
            for i, w in enumerate(widths):
                blocks.append(ResBlock(cin, w, rngs=rngs))
                cin = w
                downs.append(nnx.Conv(w, w, (3, 3), strides=2, rngs=rngs) if i < len(widths) - 1 else None)
            self.blocks = nnx.List(blocks)
            self.downs = nnx.List(downs)
            self.norm = nnx.GroupNorm(cin, num_groups=8, rngs=rngs)
            self.head = nnx.Linear(cin, num_classes, rngs=rngs)

        def __call__(self, x):
            x = self.stem(x)
            for blk, down in zip(self.blocks, self.downs):
                x = blk(x)
                if down is not None:
                    x = down(x)
            x = nnx.silu(self.norm(x))
            return self.head(jnp.mean(x, axis=(1, 2)))

    model = GNNet(rngs=nnx.Rngs(17))
    randomize_norms_nnx(model, seed=18)
    names = export(model, out, "jax_groupnorm_cnn", [(1, 64, 64, 3)])
    return common.Built(
        inputs={names[0]: image((1, 64, 64, 3), seed=6)},
        source="flax.nnx GroupNorm residual CNN (diffusion-UNet-encoder style, widths 32-128), written here",
        exporter=exporter_desc(), kind="cnn",
        notes="nnx.GroupNorm(num_groups=8) decomposed (normalization_mode=auto): NCHW->NHWC "
              "Transpose, Shape/Slice/Concat runtime shape, Reshape to [N,H,W,8,C/8], ReduceMean over "
              "(1,2,4), Sqrt, Div, Reshape back, Mul/Add affine; SiLU as Sigmoid*x; 1x1 conv skip")


def build_example_vit(out: Path) -> common.Built:
    nnx = _nnx()
    from jax2onnx.plugins.examples.nnx.vit import VisionTransformer
    model = VisionTransformer(height=28, width=28, num_hiddens=128, num_layers=2, num_heads=4, mlp_dim=256,
                              num_classes=10, embed_dims=(32, 64, 128), embedding_type="conv", rngs=nnx.Rngs(19))
    randomize_norms_nnx(model, seed=20)
    names = export(model, out, "jax_example_vit", [("B", 28, 28, 1)], input_params={"deterministic": True})
    sample = {names[0]: image((2, 28, 28, 1), seed=7)}
    for n in names[1:]:
        sample[n] = np.array(True)
    return common.Built(
        inputs=sample,
        source="jax2onnx example VisionTransformer (plugins/examples/nnx/vit.py, conv embedding, "
               "2 layers, dim 128, 4 heads, mlp 256)",
        exporter=exporter_desc(extra="input_params deterministic, dynamic batch 'B'"), kind="transformer",
        notes="components wrapped in @onnx_function: the main graph is ONE node calling nested ONNX "
              "local functions (14, domains custom.<Name>.1); no graph initializers: the 378k weights "
              "are Constant nodes inside function bodies; `deterministic` bool graph input feeds "
              "Not -> Dropout training_mode; LayerNorm over (H,W,C) in the conv embedding")


def build_example_gpt(out: Path) -> common.Built:
    import jax
    import jax.numpy as jnp
    nnx = _nnx()
    from jax2onnx.plugins.examples.nnx.gpt import GPT
    model = GPT(vocab_size=512, n_layer=2, n_head=4, n_embd=128, block_size=64, dropout=0.0, rngs=nnx.Rngs(21))
    randomize_norms_nnx(model, seed=22)
    names = export(model, out, "jax_example_gpt", [jax.ShapeDtypeStruct((1, 64), jnp.int32)],
                   input_params={"deterministic": True})
    sample = {names[0]: np.random.default_rng(8).integers(0, 512, size=(1, 64)).astype(np.int32)}
    for n in names[1:]:
        sample[n] = np.array(True)
    return common.Built(
        inputs=sample,
        source="jax2onnx example GPT (plugins/examples/nnx/gpt.py, nanoGPT-like: vocab 512, 2 layers, "
               "4 heads, dim 128, block 64)",
        exporter=exporter_desc(extra="input_params deterministic"), kind="transformer",
        notes="main graph is one node calling 14 nested ONNX local functions (custom.<Name>.N "
              "domains); no graph initializers, 540k weights in Constant nodes inside functions; "
              "causal mask via Where; `deterministic` bool graph input")


def build_example_se_resblock(out: Path) -> common.Built:
    nnx = _nnx()
    from jax2onnx.plugins.examples.nnx import channel_attention_resblock as ex
    model = ex.ResBlock(rngs=nnx.Rngs(23))
    names = export(model, out, "jax_example_se_resblock", [(1, 16, 16, ex.filters)])
    return common.Built(
        inputs={names[0]: image((1, 16, 16, ex.filters), seed=9)},
        source="jax2onnx example ResBlock with squeeze-excite channel attention "
               "(plugins/examples/nnx/channel_attention_resblock.py, 32 filters)",
        exporter=exporter_desc(), kind="cnn",
        notes="SiLU convs, ReduceMean squeeze, 1x1 conv 32->4->32, sigmoid gate multiplied into the "
              "conv output, identity residual; no norms")


def build_linen_cnn(out: Path) -> common.Built:
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    class LinenResCNN(nn.Module):
        """flax.linen CNN with BatchNorm (eval mode), a residual block and Dense head."""

        @nn.compact
        def __call__(self, x):
            x = nn.Conv(32, (3, 3), use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
            y = nn.Conv(32, (3, 3), use_bias=False)(x)
            y = nn.relu(nn.BatchNorm(use_running_average=True)(y))
            y = nn.Conv(32, (3, 3), use_bias=False)(y)
            x = nn.relu(x + nn.BatchNorm(use_running_average=True)(y))
            x = nn.Conv(64, (3, 3), strides=2, use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = x.reshape(x.shape[0], -1)
            x = nn.relu(nn.Dense(64)(x))
            return nn.Dense(10)(x)

    module = LinenResCNN()
    variables = module.init(jax.random.PRNGKey(24), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(25)

    def perturb(path, leaf):
        name = path[-1].key
        if name == "mean" or name == "bias" and "BatchNorm" in path[-2].key:
            return jnp.asarray(rng.standard_normal(leaf.shape) * 0.1, jnp.float32)
        if name == "var":
            return jnp.asarray(rng.random(leaf.shape) * 0.5 + 0.75, jnp.float32)
        if name == "scale":
            return jnp.asarray(1 + rng.standard_normal(leaf.shape) * 0.1, jnp.float32)
        return leaf

    variables = jax.tree_util.tree_map_with_path(perturb, variables)

    def forward(x):
        return module.apply(variables, x)

    names = export(forward, out, "jax_linen_cnn", [(1, 32, 32, 3)])
    return common.Built(
        inputs={names[0]: image((1, 32, 32, 3), seed=10)},
        source="flax.linen CNN with BatchNorm and one residual block, written here",
        exporter=exporter_desc(extra="plain jax function (module.apply closed over variables)"), kind="cnn",
        notes="plain JAX function export: weights are closed-over constants; linen BatchNorm eval; "
              "AveragePool then Transpose to NHWC + Reshape flatten into Gemm; stale value_info; "
              "Dense kernel (1 MB) spilled to jax_linen_cnn.onnx.data")


BUILDERS = {
    "jax_resnet": build_resnet,
    "jax_resnet18": build_resnet18,
    "jax_resnet_nchw_dyn": build_resnet_nchw_dyn,
    "jax_resnet_fresh": build_resnet_fresh,
    "jax_mobilenet": build_mobilenet,
    "jax_mlp_handln": build_mlp_handln,
    "jax_mlp_nnxln": build_mlp_nnxln,
    "jax_mlp_nnxln_native": build_mlp_nnxln_native,
    "jax_vit": build_vit,
    "jax_bert": build_bert,
    "jax_groupnorm_cnn": build_groupnorm,
    "jax_example_vit": build_example_vit,
    "jax_example_gpt": build_example_gpt,
    "jax_example_se_resblock": build_example_se_resblock,
    "jax_linen_cnn": build_linen_cnn,
}

if __name__ == "__main__":
    common.main(BUILDERS)
