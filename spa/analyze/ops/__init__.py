"""One rule per ONNX op type: how channels travel from a node's inputs to its outputs,
one module per op family, each with the rewrite hooks of its ops beside the rules.

A rule reads its inputs' labels through `ctx.axis`/`ctx.axes`, relates them (`unify`),
marks what must be kept (`fix`) or what breaks exactness (`inexact`), and sets its
outputs' labels. Ops without a rule keep every channel they touch (registry.unknown).
"""
from spa.analyze.ops import (attention, contrib, conv, elementwise, layout, linear, norm, pieces,  # noqa: F401
                             quant, reduce, shape)
