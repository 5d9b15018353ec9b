"""A part's constructor arguments, read from its signature and type hints: what its recipe
block may hold (:func:`arguments`), whether given values fit (:func:`check_arguments`), and
did-you-mean hints (:func:`close_matches`). The registries, ``percepkit list KIND NAME`` and
``percepkit recipe schema`` all read arguments here, so they agree.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["REQUIRED", "Argument", "accepts_any_key", "arguments", "built_class",
           "check_arguments", "close_matches"]


def close_matches(word: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6
                  ) -> list[str]:
    """The ``n`` candidates most like ``word``, best first (for did-you-mean hints).

    Ranked by difflib's similarity, then by the length of the common prefix, then by how near the
    first differing characters are, so ``relu1_3`` suggests ``relu1_2`` (same VGG block) before
    ``relu3_3``; ``difflib.get_close_matches`` alone breaks such ties backwards alphabetically.
    """
    scored = []
    for candidate in dict.fromkeys(candidates):
        matcher = difflib.SequenceMatcher(None, candidate, word)
        if matcher.real_quick_ratio() < cutoff or matcher.quick_ratio() < cutoff:
            continue
        ratio = matcher.ratio()
        if ratio < cutoff:
            continue
        prefix = 0
        while prefix < min(len(word), len(candidate)) and word[prefix] == candidate[prefix]:
            prefix += 1
        gap = abs(ord(word[prefix]) - ord(candidate[prefix])) \
            if prefix < min(len(word), len(candidate)) else 0
        scored.append((-ratio, -prefix, gap, candidate))
    return [candidate for *_, candidate in sorted(scored)[:n]]


REQUIRED = inspect.Parameter.empty
"""The ``default`` of an :class:`Argument` that a recipe must give."""


@dataclass(frozen=True)
class Argument:
    """One keyword argument of a part's constructor: a key its recipe block may hold."""

    name: str
    hint: Any = Any
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_text(self) -> str:
        """The accepted values in words (``an integer``, ``one of 'l1', 'l2'``)."""
        return _describe(self.hint)


def _signature(obj: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)


def _type_hints(obj: Callable[..., Any]) -> dict[str, Any]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks, keep name checks
        return {}


def arguments(obj: Callable[..., Any]) -> list[Argument]:
    """The keyword arguments of a class or factory, with type hints and defaults.

    This is what recipe validation checks keys against, what ``percepkit list KIND NAME``
    prints, and what ``percepkit recipe schema`` states.
    """
    hints = _type_hints(obj)
    out = []
    for name, p in _signature(obj).parameters.items():
        if name == "self" or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        out.append(Argument(name, hints.get(name, Any), p.default))
    return out


def built_class(obj: Callable[..., Any]) -> type | None:
    """The class a registered part builds: the class itself, or a factory's annotated return."""
    if inspect.isclass(obj):
        return obj
    try:
        ret = typing.get_type_hints(obj).get("return")
    except Exception:  # unresolvable annotations
        return None
    return ret if inspect.isclass(ret) else None


def accepts_any_key(obj: Callable[..., Any]) -> bool:
    """Whether ``obj`` takes ``**kwargs`` (then keys beyond :func:`arguments` pass unchecked)."""
    return any(p.kind is p.VAR_KEYWORD for p in _signature(obj).parameters.values())


def check_arguments(obj: Callable[..., Any], kwargs: Mapping[str, Any],
                    supplied: Sequence[str] = ()) -> list[str]:
    """Problems with calling ``obj(**kwargs)``: unknown, missing or mistyped arguments.

    ``supplied`` names arguments the calling code provides itself (not checked here).
    """
    named = {a.name: a for a in arguments(obj)}
    accepts_any = accepts_any_key(obj)
    problems = []
    for key, value in kwargs.items():
        if key in supplied:
            problems.append(f"key {key!r} is set by percepkit itself, not by the recipe")
        elif key not in named:
            if accepts_any:
                continue
            close = close_matches(str(key), list(named), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}; accepted keys: "
                            f"{', '.join(named) or '(none)'}")
        elif not _matches(value, named[key].hint):
            problems.append(f"key {key!r}: expected {named[key].type_text}, got {value!r}")
    for name, arg in named.items():
        if arg.required and name not in kwargs and name not in supplied:
            problems.append(f"missing required key {name!r}")
    return problems


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return all(_matches(v, inner) for v in value)
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            return False
        if len(args) == 2:
            return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
        return True
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
    if origin in (list, tuple, Sequence, typing.Sequence):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, Mapping, typing.Mapping):
        return "a mapping"
    if hint is Any:
        return "any value"
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    """``strings``, ``numbers``, ...: the items of a list of ``hint``."""
    plural = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}
    if hint in plural:
        return plural[hint]
    return f"items ({_describe(hint)})"
