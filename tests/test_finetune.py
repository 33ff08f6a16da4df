"""spa.finetune: the pruned ONNX model as a trainable torch module, and back.

torch is never a test dependency of spa: the checks that need it run in a virtual environment of
their own, built once and cached in ~/.cache/spa/venvs/finetune (torch, torchvision and onnx2pytorch,
with spa's own dependencies; ~65 s to build from this machine's local wheel files, ~6 GB; seconds
once cached), importing spa from this checkout (PYTHONPATH). They are marked `finetune`:
`pytest -m "not finetune"` leaves them out. SPA_FINETUNE_TORCH overrides the torch/torchvision pins
(they must be a matching pair: this machine's CPU torch 2.13.0 has no matching torchvision).

Without torch, spa.finetune imports and fails on use with one line naming the extra.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from spa.api import prune

TRAINED = ROOT / "models" / "trained"
VENV = Path.home() / ".cache" / "spa" / "venvs" / "finetune"
TORCH = os.environ.get("SPA_FINETUNE_TORCH", "torch==2.14.1 torchvision==0.29.1").split()
CONVERTER = ["onnx2pytorch>=0.6"]
ATOL = 1e-5


def _run(command: list, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _finetune_python() -> Path:
    """The cached environment's interpreter, built (or rebuilt when the requirements changed)."""
    requirements = TORCH + CONVERTER + tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    stamp, python = VENV / "spa-requirements.txt", VENV / "bin" / "python"
    if not python.exists() or not stamp.exists() or stamp.read_text() != "\n".join(requirements):
        _run([sys.executable, "-m", "venv", "--clear", VENV])
        _run([python, "-m", "pip", "install", "-q", *requirements])
        stamp.write_text("\n".join(requirements))
    return python


@pytest.fixture(scope="module")
def finetune_python() -> Path:
    return _finetune_python()


def _env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(ROOT)}


def _digits(name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(TRAINED / "digits_data.npz")
    return data["calib_x_tokens" if "transformer" in name else "calib_x"], data["calib_y"]


@pytest.mark.finetune
@pytest.mark.parametrize("name", ["digits_resnet_bn", "digits_mobilenet", "digits_transformer"])
def test_converted_module_equals_pruned_onnx_then_trains_and_exports_back(name, tmp_path, finetune_python):
    x, y = _digits(name)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=x)
    pruned = tmp_path / f"{name}_pruned.onnx"
    prune(TRAINED / f"{name}.onnx", 0.7, criterion="obs", calib=calib, output=pruned)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=x[:64], y=y[:64])
    done = _run([finetune_python, ROOT / "tests" / "finetune_checks.py", pruned, inputs, tmp_path], env=_env())
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] <= ATOL, result  # the module computes the pruned model before any step
    assert result["trained_changed"] > 1e-3, result  # the steps reached the weights
    assert result["round_trip"] <= ATOL, result  # the written file computes the trained module


@pytest.mark.finetune
def test_fresh_export_with_merged_constants_converts_exactly(tmp_path, finetune_python):
    """Pruning before training: a freshly initialized torch export (zero biases and unit scales merged
    into one initializer behind Identity nodes) converts to the same outputs, pruned data-free or not,
    and after training steps the written file computes the trained module (each BatchNorm's merged
    parameters trained apart and written apart)."""
    script = f"""
import json, warnings
warnings.filterwarnings("ignore")
import numpy as np, onnx, torch
from torch import nn
from spa.api import prune
from spa.finetune import export_onnx, max_difference, to_torch
torch.manual_seed(0)
def block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
model = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(32, 10)).eval()
x = np.load({str(TRAINED / 'digits_data.npz')!r})["calib_x"][:32]
torch.onnx.export(model, (torch.from_numpy(x[:1]),), {str(tmp_path / 'fresh.onnx')!r}, dynamo=False, opset_version=17,
                  input_names=["input"], output_names=["output"], dynamic_axes={{"input": {{0: "N"}}}},
                  training=torch.onnx.TrainingMode.PRESERVE)
identities = sum(n.op_type == "Identity" for n in onnx.load({str(tmp_path / 'fresh.onnx')!r}).graph.node)
prune({str(tmp_path / 'fresh.onnx')!r}, 0.5, output={str(tmp_path / 'small.onnx')!r})
dense = max_difference(to_torch({str(tmp_path / 'fresh.onnx')!r}), {str(tmp_path / 'fresh.onnx')!r}, {{"input": x}})
module = to_torch({str(tmp_path / 'small.onnx')!r})
pruned = max_difference(module, {str(tmp_path / 'small.onnx')!r}, {{"input": x}})
optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
module.train()
for _ in range(3):
    loss = module(torch.from_numpy(x)).square().mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
module.eval()
export_onnx(module, {str(tmp_path / 'trained.onnx')!r})
print(json.dumps({{"dense": dense, "pruned": pruned, "identities": identities,
                  "round_trip": max_difference(module, {str(tmp_path / 'trained.onnx')!r}, {{"input": x}})}}))
"""
    done = _run([finetune_python, "-c", script], env=_env())
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["identities"] > 0, result  # the export merged constants: the case under test
    assert result["dense"] <= ATOL and result["pruned"] <= ATOL, result  # before training: the same outputs
    assert result["round_trip"] <= ATOL, result  # each BatchNorm trained its own merged parameters


@pytest.mark.finetune
def test_batchnorm_running_statistics_follow_the_onnx_momentum(finetune_python):
    """ONNX's BatchNormalization momentum weighs the old running statistic (torch's exporter writes
    0.9 for torch's 0.1): one training-mode batch moves each running mean a tenth of the way to the
    batch's mean, as in the framework the model came from, not nine tenths (onnx2pytorch passes the
    attribute to torch unchanged, and the eval-mode statistics after fine-tuning were those of the
    last batch or two)."""
    script = f"""
import json, warnings
warnings.filterwarnings("ignore")
import numpy as np, onnx, torch
from onnx2pytorch.operations import BatchNormWrapper
from spa.finetune import to_torch
model = onnx.load({str(TRAINED / 'digits_resnet_bn.onnx')!r})
momentum = [a.f for n in model.graph.node if n.op_type == "BatchNormalization" for a in n.attribute
            if a.name == "momentum"]
module = to_torch(model)
wrappers = [m for m in module.modules() if isinstance(m, BatchNormWrapper)]
norms = [m.bnu for m in wrappers]
seen, before = {{}}, [n.running_mean.clone() for n in norms]
for index, wrapper in enumerate(wrappers):  # the wrapper calls its norm's forward, past the norm's hooks
    wrapper.register_forward_pre_hook(lambda m, args, index=index: seen.__setitem__(index, args[0].detach().mean((0, 2, 3))))
module.train()
with torch.no_grad():
    module(torch.from_numpy(np.load({str(TRAINED / 'digits_data.npz')!r})["calib_x"][:64]))
errors = [float((n.running_mean - (m * b + (1 - m) * seen[i])).abs().max())
          for i, (n, b, m) in enumerate(zip(norms, before, momentum))]
moved = [float((n.running_mean - b).abs().max()) for n, b in zip(norms, before)]
print(json.dumps({{"momentum": sorted(set(momentum)), "norms": len(norms), "error": max(errors), "moved": min(moved)}}))
"""
    done = _run([finetune_python, "-c", script], env=_env())
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["momentum"] == [pytest.approx(0.9)] and result["norms"] > 0, result
    assert result["moved"] > 0, result  # the batch updated every running mean
    assert result["error"] <= 1e-5, result  # by ONNX's rule: 0.9 * old + 0.1 * batch


def test_without_torch_spa_finetune_imports_and_fails_in_one_line():
    """torch and onnx2pytorch hidden (None in sys.modules makes their import fail): importing
    spa.finetune still works, and using it raises one line naming the extra; spa never imports torch."""
    script = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['onnx2pytorch'] = None\n"
        "import spa, spa.api, spa.cli, spa.finetune\n"
        "try:\n"
        f"    spa.finetune.to_torch({str(TRAINED / 'digits_resnet.onnx')!r})\n"
        "except spa.finetune.FinetuneUnavailable as error:\n"
        "    print(error)\n"
    )
    done = _run([sys.executable, "-c", script], env=_env())
    assert done.stdout.count("\n") == 1, done.stdout
    assert 'pip install "spa-prune[finetune]"' in done.stdout and "torch" in done.stdout
    clean = _run([sys.executable, "-c", "import sys, spa.api, spa.cli, spa.finetune; print('torch' in sys.modules)"],
                 env=_env())
    assert clean.stdout.strip() == "False"


def test_finetune_extra_is_optional():
    """torch and the converter are an extra, never a core dependency."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    assert "torch" not in core and "onnx2pytorch" not in core
    assert any(r.startswith("torch") for r in project["optional-dependencies"]["finetune"])
    assert any(r.startswith("onnx2pytorch") for r in project["optional-dependencies"]["finetune"])
