"""Where MACs/params targets and global ratios land on transformers.

    python tools/bench_targets.py [MODEL.onnx ...] [--wild] [--json OUT]

For every model (default: every transformer in models/, and with --wild a few of the
hf_torch family of the wild corpus in ~/.cache/spa/wild/models), prunes with `l2` (at the
default --round-to unless a setting says otherwise) and prints what each setting reached:
the MACs or params fraction for a target, and how far off the target it is (relative; a
target may be out of reach: groups keep --min-keep and 1 - --max-ratio of their channels,
rounded widths move in steps), the MACs fraction for a ratio. MACs are counted at the
inputs spa verifies on, as `spa prune` does; nothing is written.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import spa

ROOT = Path(__file__).resolve().parent.parent
WILD = Path.home() / ".cache" / "spa" / "wild" / "models" / "hf_torch"
REGRESSION = ("fused_qkv_unbind", "onnx_attention_gqa", "onnx_attention_3d", "multi_head_attention",
              "ort_optimized_bert", "keras_attention", "per_head_norm", "dynamic_batch_tokens")
WILD_MODELS = ("hf_bert", "hf_distilbert", "hf_gpt2", "hf_llama", "hf_qwen2", "hf_qwen3", "hf_vit", "hf_deit",
               "hf_whisper_cls", "hf_st_minilm_l6")
ALL_KINDS = ("channels", "heads", "mlp", "hidden")
SETTINGS = {  # name -> (keywords, (metric, fraction asked) or None for a ratio)
    "macs 0.5 global": ({"target_macs": 0.5, "scope": "global"}, ("macs", 0.5)),
    "params 0.5 global": ({"target_params": 0.5, "scope": "global"}, ("params", 0.5)),
    "macs 0.7 global": ({"target_macs": 0.7, "scope": "global"}, ("macs", 0.7)),
    "macs 0.6 global round-to 1": ({"target_macs": 0.6, "scope": "global", "round_to": 1}, ("macs", 0.6)),
    "macs 0.5 local": ({"target_macs": 0.5}, ("macs", 0.5)),
    "macs 0.39 global +hidden": ({"target_macs": 0.39, "scope": "global", "targets": ALL_KINDS}, ("macs", 0.39)),
    "ratio 0.4 global": ({"ratio": 0.4, "scope": "global"}, None),
}


def default_models(wild: bool) -> list[Path]:
    models = sorted((ROOT / "models" / "transformers").glob("*.onnx"))
    models += [ROOT / "models" / "trained" / "digits_transformer.onnx"]
    models += [ROOT / "models" / "regression" / f"{name}.onnx" for name in REGRESSION]
    if wild:
        models += [WILD / f"{name}.onnx" for name in WILD_MODELS if (WILD / f"{name}.onnx").exists()]
    return models


def reached(path: Path, keywords: dict, asked: tuple[str, float] | None) -> dict:
    start = time.perf_counter()
    try:
        result = spa.prune(str(path), **keywords)
    except Exception as error:  # noqa: BLE001 - the table says which setting failed, and goes on
        return {"error": f"{type(error).__name__}: {str(error)[:60]}"}
    before, after = result.report["before"], result.report["after"]
    metric = asked[0] if asked else "macs"
    fraction = after[metric] / before[metric]
    row = {"fraction": round(fraction, 4), "seconds": round(time.perf_counter() - start, 2)}
    if asked:
        row["off"] = round(fraction / asked[1] - 1, 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--wild", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = {}
    print("| model | " + " | ".join(SETTINGS) + " |")
    print("|---" * (len(SETTINGS) + 1) + "|")
    for path in args.models or default_models(args.wild):
        rows[path.stem] = {name: reached(path, kw, asked) for name, (kw, asked) in SETTINGS.items()}
        print(f"| {path.stem} | " + " | ".join(_cell(cell) for cell in rows[path.stem].values()) + " |", flush=True)
    offs = [abs(c["off"]) for r in rows.values() for c in r.values() if "off" in c]
    if offs:
        print(f"\ntargets: {len(offs)}, mean |off| {sum(offs) / len(offs):.4f}, worst {max(offs):.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _cell(cell: dict) -> str:
    if "error" in cell:
        return "-"
    return f"{cell['fraction']:.3f}" + (f" ({cell['off']:+.1%})" if "off" in cell else "")


if __name__ == "__main__":
    main()
