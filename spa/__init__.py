"""spa: Structurally Prune Anything, on ONNX.

    result = spa.prune("model.onnx", ratio=0.4)     # PruneResult: .model, .report
    analysis = spa.inspect("model.onnx")            # Analysis: .groups, .to_json()
"""
from spa.api import PruneResult, inspect, prune
from spa.errors import SpaError

__all__ = ["PruneResult", "SpaError", "inspect", "prune"]
