"""Registries: the one way percepkit finds its parts by name.

Each registry maps names (and aliases) to classes or factory functions. Built-in modules and
third-party plugins are imported on the first lookup, never at ``import percepkit``, so one broken
optional dependency cannot break everything else.

Plugins are found two ways, both lazily and once per process:

* entry points in the group ``percepkit.plugins`` (the value is a module to import), and
* modules under the PEP 420 namespace package ``percepkit_plugins``.

A plugin that fails to import produces a warning naming it; a plugin may not replace a built-in
name unless it registers with ``override=True`` (which still warns).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
import inspect
import pkgutil
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import PercepkitError, RecipeError

PLUGIN_GROUP = "percepkit.plugins"
PLUGIN_NAMESPACE = "percepkit_plugins"
BUILTIN = "percepkit"

_current_source: str = BUILTIN
_plugins_loaded = False
_ALL: list[Registry] = []


@dataclass
class Entry:
    """One registered part."""

    name: str
    obj: Callable[..., Any]
    aliases: tuple[str, ...]
    source: str
    prefix_arg: str | None = None

    @property
    def doc(self) -> str:
        """The part's whole docstring (``percepkit list KIND NAME``)."""
        return (inspect.getdoc(self.obj) or "").strip()

    @property
    def description(self) -> str:
        """The first line of the docstring (``percepkit list``)."""
        return self.doc.splitlines()[0] if self.doc else ""

    @property
    def display_name(self) -> str:
        return f"{self.name}:<{self.prefix_arg}>" if self.prefix_arg else self.name


class Registry:
    """A named collection of parts of one kind (transforms, losses, ...).

    ``modules`` are the built-in modules that register into it; they are imported on first use.
    """

    def __init__(self, kind: str, modules: Sequence[str] = ()) -> None:
        self.kind = kind
        self.modules = tuple(modules)
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._builtins_loaded = False
        _ALL.append(self)

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        *,
        aliases: Sequence[str] = (),
        override: bool = False,
        prefix_arg: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a class or factory under ``name`` (default: its ``__name__``).

        ``prefix_arg`` lets ``"name:value"`` pass ``value`` as that keyword (``timm:resnet50``).
        """

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            self.add(obj, name or obj.__name__, aliases=aliases, override=override,
                     prefix_arg=prefix_arg)
            return obj

        return decorator

    def add(
        self,
        obj: Callable[..., Any],
        name: str,
        *,
        aliases: Sequence[str] = (),
        override: bool = False,
        prefix_arg: str | None = None,
    ) -> None:
        """Register ``obj`` under ``name``; see :meth:`register`."""
        source = _current_source
        replaced = []
        for key in (name, *aliases):
            old = self._lookup(key)
            if old is None or _same_definition(old.obj, obj):
                continue  # re-importing a module (reload) re-registers the same definition
            if not override:
                raise PercepkitError(
                    f"{self.kind} {key!r} is already registered (by {old.source}); "
                    f"pass override=True to replace it deliberately."
                )
            if old.source == BUILTIN and source != BUILTIN:
                replaced.append(repr(key))
        if replaced:
            warnings.warn(f"plugin {source} replaces the built-in {self.kind} "
                          f"{' and '.join(replaced)}", stacklevel=3)
        for key in (name, *aliases):
            old = self._lookup(key)
            if old is not None:
                self._remove(old)
        entry = Entry(name, obj, tuple(aliases), source, prefix_arg)
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name

    def _remove(self, entry: Entry) -> None:
        self._entries.pop(entry.name, None)
        for alias in entry.aliases:
            self._aliases.pop(alias, None)

    def _lookup(self, key: str) -> Entry | None:
        key = self._aliases.get(key, key)
        return self._entries.get(key)

    # -- lookup --------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self.modules:
                importlib.import_module(module)
        load_plugins()

    def entries(self) -> list[Entry]:
        """All entries, sorted by name."""
        self._ensure_loaded()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        """All names and aliases."""
        self._ensure_loaded()
        return sorted([*self._entries, *self._aliases])

    def list(self, pattern: str = "*") -> list[str]:
        """Names matching a shell-style wildcard, like ``timm.list_models('vgg*')``."""
        return [e.name for e in self.entries() if fnmatch.fnmatchcase(e.name, pattern)
                or any(fnmatch.fnmatchcase(a, pattern) for a in e.aliases)]

    def __contains__(self, name: str) -> bool:
        try:
            self.entry(name)
        except PercepkitError:
            return False
        return True

    def entry(self, name: str) -> Entry:
        """The entry for ``name`` (or ``prefix:value``); unknown names get did-you-mean hints."""
        self._ensure_loaded()
        entry = self._lookup(name)
        if entry is None and ":" in name:
            prefixed = self._lookup(name.split(":", 1)[0])
            if prefixed is not None and prefixed.prefix_arg:
                entry = prefixed
        if entry is None:
            raise PercepkitError(f"unknown {self.kind} {name!r}. {self._suggest(name)}")
        return entry

    def get(self, name: str) -> Callable[..., Any]:
        """The registered class or factory for ``name``."""
        return self.entry(name).obj

    def _suggest(self, name: str) -> str:
        names = [e.display_name for e in self.entries()] + list(self._aliases)
        close = close_matches(name, names, n=3, cutoff=0.5)
        hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        return f"{hint}Available: {', '.join(sorted(names)) or '(none)'}."

    # -- building ------------------------------------------------------------------------------
    def build(self, spec: Mapping[str, Any] | str, *, where: str = "", **extra: Any) -> Any:
        """Build a part from ``{"name": ..., **kwargs}`` (or just a name).

        Keyword arguments are checked against the constructor's signature first, so a typo in a
        recipe gives one clear error naming the key path (``where``) instead of a TypeError.
        """
        name, kwargs = self.resolve(spec, where=where)
        kwargs.update(extra)
        return self.get_checked(name, kwargs, where=where)(**kwargs)

    def resolve(self, spec: Mapping[str, Any] | str, *, where: str = "") -> tuple[str, dict]:
        """Split a spec into its name and keyword arguments (``prefix:value`` expanded)."""
        label = where or self.kind
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping):
            raise RecipeError(f"{label}: expected a mapping with a 'name' key, got {spec!r}")
        if "name" not in spec:
            raise RecipeError(f"{label}: missing key 'name' (which {self.kind} to use). "
                              f"{self._suggest('')}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
        if not isinstance(name, str):
            raise RecipeError(f"{label}.name: expected a string, got {name!r}")
        try:
            entry = self.entry(name)
        except PercepkitError as e:
            raise RecipeError(f"{label}.name: {e}") from None
        if entry.prefix_arg and name != entry.name and ":" in name:
            kwargs.setdefault(entry.prefix_arg, name.split(":", 1)[1])
        return name, kwargs

    def get_checked(self, name: str, kwargs: Mapping[str, Any], *, where: str = "") -> Callable:
        """Return the constructor for ``name`` after checking ``kwargs`` against it."""
        obj = self.get(name)
        problems = check_arguments(obj, kwargs)
        if problems:
            label = where or f"{self.kind} {name!r}"
            raise RecipeError(f"{label}: " + "; ".join(problems))
        return obj


def _same_definition(a: Any, b: Any) -> bool:
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
        (getattr(b, "__module__", None), getattr(b, "__qualname__", None))


# -- argument checking ---------------------------------------------------------------------------
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


# -- plugins --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _source(name: str) -> Iterator[None]:
    global _current_source
    previous, _current_source = _current_source, name
    try:
        yield
    finally:
        _current_source = previous


def _import_plugin(label: str, module: str, loader: Callable[[], Any]) -> None:
    """Import one plugin; if it fails (even with ``sys.exit``), nothing it registered stays."""
    saved = [(r, dict(r._entries), dict(r._aliases)) for r in _ALL]
    with _source(label):
        try:
            loader()
        except (Exception, SystemExit) as exc:  # a broken plugin must not break percepkit
            for registry, entries, aliases in saved:
                registry._entries, registry._aliases = entries, aliases
            what = f"exit({exc.code})" if isinstance(exc, SystemExit) else \
                f"{type(exc).__name__}: {exc}"
            warnings.warn(f"percepkit plugin {label!r} ({module}) failed to load and is skipped "
                          f"({what})", stacklevel=4)


def load_plugins() -> None:
    """Import every plugin once: entry points first, then ``percepkit_plugins.*`` modules."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for registry in _ALL:  # built-ins first, so a plugin can never take a built-in name first
        if not registry._builtins_loaded:
            registry._builtins_loaded = True
            for module in registry.modules:
                importlib.import_module(module)
    for ep in entry_points(group=PLUGIN_GROUP):
        _import_plugin(ep.name, ep.value, ep.load)
    try:
        namespace = importlib.import_module(PLUGIN_NAMESPACE)
    except ImportError:
        return
    for info in pkgutil.iter_modules(namespace.__path__, prefix=f"{PLUGIN_NAMESPACE}."):
        _import_plugin(info.name, info.name,
                       lambda n=info.name: importlib.import_module(n))  # type: ignore[misc]


def reset_plugins_for_tests() -> None:
    """Forget that plugins were loaded (tests that install a plugin call this)."""
    global _plugins_loaded
    _plugins_loaded = False


# -- the registries -------------------------------------------------------------------------------
TRANSFORMS = Registry("transform", ["percepkit.transforms", "percepkit.spandrel_arch"])
LOSS_NETWORKS = Registry("loss network", ["percepkit.lossnets"])
#: the loss network of a recipe (or an optimisation) that names none: the paper's VGG16
DEFAULT_LOSS_NETWORK: dict[str, str] = {"name": "vgg16", "weights": "imagenet"}
LOSSES = Registry("loss", ["percepkit.losses", "percepkit.metric_losses"])
DATASETS = Registry("dataset", ["percepkit.datasets", "percepkit.benchmark_sets"])
METRICS = Registry("metric", ["percepkit.metrics"])
OPTIMIZERS = Registry("optimizer", ["percepkit.optimizers"])
SCHEDULERS = Registry("scheduler", ["percepkit.optimizers"])
MODELS = Registry("model", ["percepkit.zoo"])

REGISTRIES: dict[str, Registry] = {
    "transforms": TRANSFORMS,
    "lossnets": LOSS_NETWORKS,
    "losses": LOSSES,
    "datasets": DATASETS,
    "metrics": METRICS,
    "optimizers": OPTIMIZERS,
    "schedulers": SCHEDULERS,
    "models": MODELS,
}
