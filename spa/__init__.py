"""spa: Structurally Prune Anything, on ONNX.

    result = spa.prune("model.onnx", ratio=0.4)     # PruneResult: .model, .report
    analysis = spa.inspect("model.onnx")            # Analysis: .groups, .to_json()
"""
import os

# OpenBLAS's worker threads busy-wait for about 0.1 s after each call. numpy and scipy each
# load their own OpenBLAS, and onnxruntime has its own threads, so spinning workers of one
# take the cores the next call needs (ResNet-50 with obs: 19 s wall and 31 s CPU, against 15
# and 20 with them sleeping at once). OpenBLAS reads this once, when numpy first loads it:
# it acts where spa is imported before numpy (the CLI), and a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from spa.errors import SpaError  # noqa: E402 - after the setting above

__all__ = ["PruneResult", "SpaError", "__version__", "inspect", "prune"]

DISTRIBUTION = "spa-prune"  # the name on PyPI (`spa` there is another project); imported as `spa`


def __getattr__(name: str):
    """The API loads on first use: `spa` on the command line starts inside its own error handling."""
    if name in ("PruneResult", "inspect", "prune"):
        from spa import api
        return getattr(api, name)
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'spa' has no attribute {name!r}")


def _version() -> str:
    """The installed distribution's version; not installed under DISTRIBUTION (a source
    checkout on PYTHONPATH), the version in the checkout's pyproject.toml; else 0+unknown."""
    import re
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match and f'name = "{DISTRIBUTION}"' in text else "0+unknown"
