"""spa: Structurally Prune Anything, on ONNX.

    result = spa.prune("model.onnx", ratio=0.4)     # PruneResult: .model, .report
    analysis = spa.inspect("model.onnx")            # Analysis: .groups, .to_json()
"""
from spa.errors import SpaError

__all__ = ["PruneResult", "SpaError", "inspect", "prune"]


def __getattr__(name: str):
    """The API loads on first use: `spa` on the command line starts inside its own error handling."""
    if name in ("PruneResult", "inspect", "prune"):
        from spa import api
        return getattr(api, name)
    raise AttributeError(f"module 'spa' has no attribute {name!r}")
