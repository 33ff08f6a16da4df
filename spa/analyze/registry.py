"""The op rule registry: one rule per op type, keyed by the op's name in the default ONNX
domain and by "domain:Op" in others (com.microsoft's fused and quantized ops)."""
from __future__ import annotations

from typing import Callable

import onnx_graphsurgeon as gs

from spa.analyze.context import NodeContext

Rule = Callable[[NodeContext], None]
RULES: dict[str, Rule] = {}
DEFAULT_DOMAINS = ("", "ai.onnx")


def rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register a rule for op types ("Conv", "com.microsoft:Attention"); a second rule for
    one op type is a programming error."""
    def register(function: Rule) -> Rule:
        for op in ops:
            if op in RULES:
                raise ValueError(f"a rule for {op} is already registered ({RULES[op].__name__})")
            RULES[op] = function
        return function
    return register


def rule_key(node: gs.Node) -> str:
    domain = node.domain or ""
    return node.op if domain in DEFAULT_DOMAINS else f"{domain}:{node.op}"


def rule_for(node: gs.Node) -> Rule | None:
    return RULES.get(rule_key(node))
