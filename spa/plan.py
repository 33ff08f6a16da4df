"""What one prune call asks for, besides the model and where results go: small option
groups the API builds from its keywords and every stage reads."""
from __future__ import annotations

from dataclasses import dataclass

import re

from spa.analyze import DEFAULT_TARGETS, KINDS
from spa.calibrate.frontier import DEFAULT_BUDGET
from spa.criteria.score import Scoring
from spa.errors import SpaError
from spa.select import Selection


@dataclass
class Plan:
    scoring: Scoring  # which criterion, how member scores combine
    selection: Selection  # how many channels go: ratio, scope, rounding
    targets: tuple[str, ...] = DEFAULT_TARGETS  # kinds of groups to prune
    include_inexact: bool = False
    ignore: tuple[str, ...] = ()  # nodes and initializers to keep whole
    target: tuple[str, float] | None = None  # ("macs" | "params" | "latency", fraction of the original)
    correct_stats: bool = False
    steps: int = 1
    memory_budget: int = DEFAULT_BUDGET  # bytes of calibration activations kept in memory
    threads: int = 1  # onnxruntime intra-op threads latency is profiled and measured at

    def check(self) -> None:
        self.scoring.check()
        self.selection.check()
        if self.threads < 1:
            raise SpaError(f"--threads must be at least 1, got {self.threads}")
        if self.steps < 1:
            raise SpaError(f"--steps must be at least 1, got {self.steps}")
        unknown_targets = set(self.targets) - set(KINDS)
        if unknown_targets:
            raise SpaError(f"unknown target {sorted(unknown_targets)[0]!r} (choose from {', '.join(KINDS)})")


def target_goal(target_macs: float | None, target_params: float | None,
                target_latency: float | None = None) -> tuple[str, float] | None:
    """("macs" | "params" | "latency", fraction), from at most one of the three."""
    given = {"macs": target_macs, "params": target_params, "latency": target_latency}
    if sum(value is not None for value in given.values()) > 1:
        raise SpaError("give one of --target-macs, --target-params, --target-latency")
    for name, value in given.items():
        if value is not None:
            if not 0 < value <= 1:
                raise SpaError(f"--target-{name} must be a fraction in (0, 1], got {value}")
            return name, value
    return None


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def memory_size(text: str | int) -> int:
    """Bytes from "512M", "1.5G", "2g", "800k" or a plain number of bytes."""
    if isinstance(text, int):
        found = [str(text), ""]
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
        if not match:
            raise SpaError(f"--memory-budget: expected a size such as 512M or 2G, got {text!r}")
        found = list(match.groups())
    size = int(float(found[0]) * _UNITS[found[1]])
    if size < 1:
        raise SpaError(f"--memory-budget must be positive, got {text!r}")
    return size
