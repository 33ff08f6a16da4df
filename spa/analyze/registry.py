"""The op registries: one analysis rule per op type, and for the op types whose attributes
or inputs count channels, one rewrite hook, written beside the rule (spa/analyze/ops/).
Keys are the op's name in the default ONNX domain and "domain:Op" in others
(com.microsoft's fused and quantized ops). An op without a rule goes to `unknown`, which
keeps every channel it touches."""
from __future__ import annotations

import functools
from typing import Callable

import onnx_graphsurgeon as gs

from spa.analyze.context import NodeContext, RewriteContext

Rule = Callable[[NodeContext], None]
Hook = Callable[[RewriteContext, gs.Node], None]
RULES: dict[str, Rule] = {}
REWRITES: dict[str, Hook] = {}
DEFAULT_DOMAINS = ("", "ai.onnx")


def _registrar(table: dict, what: str, ops: tuple[str, ...]) -> Callable:
    def register(function):
        for op in ops:
            if op in table:
                raise ValueError(f"a {what} for {op} is already registered ({table[op].__name__})")
            table[op] = function
        return function
    return register


def rule(*ops: str, known: tuple[int, ...] = ()) -> Callable[[Rule], Rule]:
    """Register the analysis rule of op types ("Conv", "com.microsoft:Attention"); a second
    rule for one op type is a programming error. The inputs in `known` must have a known
    rank: where one does not, the node goes to `unknown` and the rule never runs."""
    def register(function: Rule) -> Rule:
        checked = _requiring(function, known) if known else function
        return _registrar(RULES, "rule", ops)(checked)
    return register


def _requiring(function: Rule, known: tuple[int, ...]) -> Rule:
    @functools.wraps(function)
    def checked(ctx: NodeContext) -> None:
        if any(not ctx.has_input(i) or ctx.state.labels_of(ctx.tensor(i)) is None for i in known):
            return unknown(ctx)
        return function(ctx)
    return checked


def rewrite_hook(*ops: str) -> Callable[[Hook], Hook]:
    """Register what the rewrite does to nodes of these op types once channels are gone."""
    return _registrar(REWRITES, "rewrite hook", ops)


def rule_key(node: gs.Node) -> str:
    domain = node.domain or ""
    return node.op if domain in DEFAULT_DOMAINS else f"{domain}:{node.op}"


def rule_for(node: gs.Node) -> Rule | None:
    return RULES.get(rule_key(node))


def hook_for(node: gs.Node) -> Hook | None:
    return REWRITES.get(rule_key(node))


def unknown(ctx: NodeContext) -> None:
    """An op the analysis cannot follow: every channel it touches is kept."""
    key = rule_key(ctx.node)
    if key not in RULES:
        ctx.state.unsupported[key] = ctx.state.unsupported.get(key, 0) + 1
    reason = f"{ctx.where()} is not supported" if key not in RULES else \
        f"{ctx.where()}: shapes or arguments it cannot follow"
    whole = ctx.view(list(range(len(ctx.node.inputs))))  # every input of the node, in a view too
    for index in range(whole.input_count):
        if whole.has_input(index):
            whole.fix_all(whole.axes(index), reason)
    for name in outer_names(ctx.node):
        ctx.fix_all(ctx.state.axes.get(name), reason)
    for index, tensor in enumerate(ctx.node.outputs):
        shape = tensor.shape
        ctx.set_output(index, [None] * len(shape) if shape is not None else None)


def outer_names(node) -> set[str]:
    """Tensors a control-flow node's subgraphs read from enclosing graphs, at any depth."""
    names: set[str] = set()
    for subgraph in _subgraphs(node):
        defined = {t.name for t in subgraph.inputs} | {t.name for n in subgraph.nodes for t in n.outputs}
        for inner in subgraph.nodes:
            names.update(t.name for t in inner.inputs if t.name not in defined)
            names.update(outer_names(inner) - defined)
        names.update(t.name for t in subgraph.outputs if t.name not in defined)
    return names


def _subgraphs(node) -> list:
    found = []
    for value in node.attrs.values():
        for item in value if isinstance(value, list) else [value]:
            if hasattr(item, "nodes") and hasattr(item, "inputs"):
                found.append(item)
    return found

