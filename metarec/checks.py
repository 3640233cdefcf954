"""Valid values of config keys, declared once beside each schema field, and the check of a composed config.

A schema field takes its default and its rule from `rule`:

    max_steps: int = rule(1000, ">= 1")                  # meta-updates
    patience: Optional[int] = rule(None, ">= 1")         # null passes: the type says it may be null
    ndcg_gain: str = rule("exp", "one of exp, linear")
    hidden: list[int] = rule([64, 64], "each >= 1")
    x_min: float = rule(-5.0, "any")                     # every value is valid (declared, so not forgotten)

A rule is ">= a", "> a", "<= a", "< a", "in [a, b]" (or "(a, b]", "[a, b)", "(a, b)"), "one of x, y",
"any", "each RULE" (every item of a list), or a function of the value that returns what is wrong (a
string) or None. A schema with keys that bind each other (min <= max) gives a static method
`relations(node, prefix)` that returns the broken ones as lines (`ordered` writes them). A field without a rule is not checked.
`check(cfg)` walks a composed config's typed nodes (each knows its dataclass) before any data is
read, and raises one UserError line: `trainer.meta_batch_size=0: must be >= 1`, `eval.ndcg_gain='bogus'
is not one of exp, linear`.
"""
from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Iterable
from typing import Any, Callable

from metarec.errors import UserError

_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def rule(default: Any, check: str | Callable[[Any], str | None]) -> Any:
    """A dataclass field with `default` (a list is copied per instance) whose valid values `check` says."""
    parse(check)  # a malformed rule fails when its schema is imported, not when a value meets it
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check})


def parse(check: str | Callable) -> Callable[[Any], str | None]:
    """The rule as a function of a value: None when the value is valid, else what it must be."""
    if callable(check):
        return check
    text = check.strip()
    if text == "any":
        return lambda v: None
    if text.startswith("each "):
        inner = parse(text[5:])
        return lambda v: next((f"each item {m}" for x in _items(v) if (m := inner(x))), None)
    if text.startswith("one of "):
        choices = [c.strip() for c in text[7:].split(",")]
        return lambda v: None if str(v) in choices else f"is not one of {', '.join(choices)}"
    if text.startswith("in "):
        lo_open, hi_open = text[3] == "(", text[-1] == ")"
        lo, hi = (float(x) for x in text[4:-1].split(","))
        ok = lambda v: (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)  # noqa: E731
        return lambda v: None if _number(v) and ok(v) else f"must be {text}"
    op, _, bound = text.partition(" ")
    if op not in _COMPARE:
        raise ValueError(f"unknown config rule {check!r}")
    compare, limit = _COMPARE[op], float(bound)
    return lambda v: None if _number(v) and compare(v, limit) else f"must be {text}"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # nan is no number here


def _items(v: Any) -> list:
    return list(v) if isinstance(v, Iterable) and not isinstance(v, (str, bytes)) else [v]


def shares(n: int) -> Callable[[Any], str | None]:
    """A rule: n shares, each above 0 (every part gets some), that sum to 1."""
    def check(v) -> str | None:
        v = _items(v)
        if len(v) != n or not all(_number(x) and 0 < x < 1 for x in v) or abs(sum(v) - 1) > 1e-6:
            return f"must be {n} shares in (0, 1) that sum to 1"
        return None
    return check


def ordered(node, prefix: str, *pairs: tuple[str, str, str]) -> list[str]:
    """The broken ones of (low key, "<" or "<=", high key) relations of one node, as lines."""
    lines = []
    for lo, op, hi in pairs:
        a, b = node[lo], node[hi]
        if _number(a) and _number(b) and not _COMPARE[op](a, b):
            lines.append(f"{prefix}.{lo}={a} and {prefix}.{hi}={b}: {prefix}.{lo} must be {op} {prefix}.{hi}")
    return lines


def problems(cfg, prefix: str = "") -> list[str]:
    """Every broken rule of a composed (typed) config, one line each, in schema order."""
    from omegaconf import DictConfig, OmegaConf
    schema = OmegaConf.get_type(cfg)
    lines: list[str] = []
    fields = dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else []
    for f in fields:
        key = f"{prefix}{f.name}"
        if f.name not in cfg or OmegaConf.is_missing(cfg, f.name):
            continue
        value = cfg[f.name]
        if isinstance(value, DictConfig):
            lines += problems(value, f"{key}.")
        elif value is not None and "check" in f.metadata:
            plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            message = parse(f.metadata["check"])(plain)
            if message:  # a choice reads as the constructors' messages do: key='value' is not one of a, b
                lines.append(f"{key}={plain!r} {message}" if message.startswith("is not one of") else f"{key}={_show(plain)}: {message}")
    if isinstance(schema, type) and issubclass(schema, Related) and not lines:
        lines += schema.relations(cfg, prefix.rstrip("."))
    return lines


class Related:
    """A schema whose keys must also hold together (data.split sums to 1, a support size below the
    ratings a task has): `relations(node, prefix)` returns a line per broken relation, checked once every
    key is within its own rule."""

    @staticmethod
    def relations(c, prefix: str) -> list[str]:
        return []


def _show(v: Any) -> str:
    return f"[{', '.join(map(str, v))}]" if isinstance(v, list) else str(v)


def check(cfg, prefix: str = "") -> None:
    """Raise one UserError line naming every key whose value breaks its schema's rule (`prefix`: the
    node's place in the whole config, e.g. "data." for the data node)."""
    lines = problems(cfg, prefix)
    if lines:
        raise UserError("; ".join(lines))
