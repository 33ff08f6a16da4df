"""Shape ops: they read sizes; where those sizes go is checked by spa.analyze.shapes."""
from __future__ import annotations


from spa.analyze.context import NodeContext
from spa.analyze.registry import rule


@rule("Shape")
def Shape(ctx: NodeContext) -> None:
    """Reads sizes only; where those sizes go is checked by the shape-value pass."""
    ctx.axes(0)
    ctx.set_output(0, [None])


@rule("Size")
def Size(ctx: NodeContext) -> None:
    ctx.fix_all(ctx.axes(0), f"{ctx.where()} reads the element count")
    ctx.set_output(0, [])


@rule("ConstantOfShape", "Range")
def creates_from_shape(ctx: NodeContext) -> None:
    """Inputs are shape vectors and scalars; what reads their sizes is checked later."""
    for index in range(ctx.input_count):
        ctx.axes(index)
    shape = ctx.out_shape()
    ctx.set_output(0, [None] * len(shape) if shape is not None else None)
