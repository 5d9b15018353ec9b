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
import fnmatch
import importlib
import inspect
import pkgutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..errors import PercepkitError, RecipeError
from .arguments import check_arguments, close_matches

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
    ``plugins=False`` makes a private registry that plugins never see (an application's own
    parts, a test's throwaway registry).
    """

    def __init__(self, kind: str, modules: Sequence[str] = (), *, plugins: bool = True) -> None:
        self.kind = kind
        self.modules = tuple(modules)
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._builtins_loaded = False
        if plugins:
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

    def remove(self, name: str) -> None:
        """Unregister ``name`` and its aliases (an unknown name is a :class:`PercepkitError`)."""
        self._remove(self.entry(name))

    @contextlib.contextmanager
    def restored(self) -> Iterator[Registry]:
        """A block whose registrations, replacements and removals are undone at its end (tests,
        a notebook trying a part); built-ins and plugins are loaded before it starts."""
        self._ensure_loaded()
        entries, aliases = dict(self._entries), dict(self._aliases)
        try:
            yield self
        finally:
            self._entries, self._aliases = entries, aliases

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
TRANSFORMS = Registry("transform", ["percepkit.nets.transforms", "percepkit.nets.spandrel_arch"])
LOSS_NETWORKS = Registry("loss network", ["percepkit.nets.lossnets"])
#: the loss network of a recipe (or an optimisation) that names none: the paper's VGG16
DEFAULT_LOSS_NETWORK: dict[str, str] = {"name": "vgg16", "weights": "imagenet"}
LOSSES = Registry("loss", ["percepkit.losses", "percepkit.losses.metric_terms"])
DATASETS = Registry("dataset", ["percepkit.data.datasets", "percepkit.data.benchmark_sets",
                                "percepkit.data.paired"])
DEGRADATIONS = Registry("degradation", ["percepkit.data.degradations"])
METRICS = Registry("metric", ["percepkit.metrics"])
OPTIMIZERS = Registry("optimizer", ["percepkit.train.optimizers"])
SCHEDULERS = Registry("scheduler", ["percepkit.train.optimizers"])
MODELS = Registry("model", ["percepkit.models.zoo"])
DISCRIMINATORS = Registry("discriminator", ["percepkit.nets.discriminators"])
#: restoration problems (``task:`` in recipes, ``percepkit eval --task``): classes derived from
#: :class:`percepkit.train.tasks.Task`
TASKS = Registry("task", ["percepkit.train.tasks", "percepkit.train.restoration_tasks"])

REGISTRIES: dict[str, Registry] = {
    "transforms": TRANSFORMS,
    "lossnets": LOSS_NETWORKS,
    "losses": LOSSES,
    "datasets": DATASETS,
    "degradations": DEGRADATIONS,
    "metrics": METRICS,
    "optimizers": OPTIMIZERS,
    "schedulers": SCHEDULERS,
    "models": MODELS,
    "discriminators": DISCRIMINATORS,
    "tasks": TASKS,
}
