"""Run by tests/test_finetune.py inside the finetune environment (torch, torchvision, onnx2pytorch):
    python tests/finetune_checks.py PRUNED.onnx INPUTS.npz OUT_DIR
prints one JSON object with what the test asserts:

- before: max |module - onnxruntime| of the converted pruned model, before any training step;
- trained_changed: the same after three optimizer steps (the weights train, so it is large);
- round_trip: max |module - onnxruntime| on the file export_onnx writes after those steps;
- parameters, buffers_promoted: the module's trainable tensors, and how many were ONNX constants.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.nn.functional as F

    from spa.finetune import export_onnx, max_difference, to_torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    pruned, data, out = Path(sys.argv[1]), dict(np.load(sys.argv[2])), Path(sys.argv[3])
    inputs = {"input": data["x"]}
    module = to_torch(pruned)
    result = {"before": max_difference(module, pruned, inputs),
              "parameters": sum(1 for _ in module.parameters()),
              "buffers_promoted": sum(1 for name, _ in module.named_parameters() if name.startswith("_initializer_"))}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    module.train()
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    for _ in range(3):
        loss = F.cross_entropy(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    result["trained_changed"] = max_difference(module, pruned, inputs)
    written = export_onnx(module, out / f"{pruned.stem}_trained.onnx")
    result["round_trip"] = max_difference(module, written, inputs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
