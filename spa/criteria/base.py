"""What a criterion is: a class declaring what it needs and whether it repairs, registered
under the name `--criterion` takes."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from spa.analyze import Group, Member
    from spa.calibrate.layers import LinearLayer

CRITERIA: dict[str, "Criterion"] = {}
DEFAULT_CRITERION = "l2"  # what ranks channels when no criterion is given (README, Data-free pruning: why)


def register(cls: type["Criterion"]) -> type["Criterion"]:
    if cls.name in CRITERIA:
        raise ValueError(f"a criterion named {cls.name!r} is already registered")
    CRITERIA[cls.name] = cls()
    return cls


class Criterion:
    """One way of ranking channels (lowest score goes first).

    Magnitude criteria score a group from weights alone (`weight_scores`). Data criteria
    (`needs_data`) measure the linear layers reading the group on calibration data,
    accumulating `statistic` per layer (the moments of its input, or its Hessian), score
    from that (`layer_scores`), and pick the channels to remove group by group
    (`remove`), repairing the layers' weights where `compensates`."""
    name = ""
    needs_data = False
    compensates = False  # changes the weights it keeps: layers need a bias to move means into
    statistic = "moments"  # what data criteria accumulate per consumer layer: "moments" or "hessian"

    def weight_scores(self, weights: "WeightView", group: "Group") -> tuple[list[np.ndarray], str | None]:
        """One score array per member (or a single one), or why the group cannot be scored."""
        raise NotImplementedError(f"{self.name} scores from calibration data, not weights")

    def layer_scores(self, layer: "LinearLayer", member: "Member", measured, damping: float) -> np.ndarray:
        """One consumer layer's score for each channel of the member's group."""
        raise NotImplementedError(f"{self.name} scores from weights, not calibration data")

    def remove(self, group: "Group", count: int, layers: list, measured: dict, scores: np.ndarray,
               damping: float, gone: dict) -> list[int]:
        """The channels to remove, repairing the consumer layers if the criterion does."""
        from spa.select import choose
        return choose(group, scores, count)


class WeightView:
    """The graph's initializers and who reads them, for magnitude criteria."""

    def __init__(self, graph: gs.Graph, seed: int) -> None:
        self.tensors = graph.tensors()
        self.graph = graph
        self.rng = np.random.default_rng(seed)
        self._readers: dict[str, list[gs.Node]] | None = None

    @property
    def readers(self) -> dict[str, list[gs.Node]]:
        if self._readers is None:
            from spa.calibrate.layers import weight_readers
            self._readers = weight_readers(self.graph)
        return self._readers
