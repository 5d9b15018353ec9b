"""A JSON Schema (draft-07) of recipes, generated from the registries.

``percepkit recipe schema > recipe.schema.json`` writes it; editors that understand JSON Schema
(VS Code's YAML extension, anything built on yaml-language-server) then complete and check
recipes as you type when the recipe's first line is::

    # yaml-language-server: $schema=recipe.schema.json

Every registered part (plugins included) is one ``oneOf`` branch keyed on ``name``, with its
constructor arguments as properties: types from the type hints, ``enum`` from ``Literal``
hints, defaults, and the numeric ranges of :data:`percepkit.recipes.recipe.RANGES`. Parts without
required arguments may also be given by name alone (``transform: bicubic``). The schema states
the structure; ``percepkit recipe check`` also checks what depends on several blocks at once
(layer names of the chosen loss network, the transform's scale against the data, folders).
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ..registry import (
    DATASETS,
    DEGRADATIONS,
    LOSSES,
    Registry,
)
from ..registry.arguments import Argument, accepts_any_key, arguments

#: draft-07: what yaml-language-server (VS Code's YAML extension) reads
DIALECT = "http://json-schema.org/draft-07/schema#"


def hint_schema(hint: Any) -> dict[str, Any]:
    """The JSON Schema of the values a type hint accepts (as :func:`arguments.check_arguments`
    checks them: integers are numbers, booleans are not integers, lists and tuples are arrays)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [hint_schema(a) for a in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    simple = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        return {"type": simple[hint]}
    if origin is tuple and args and args[-1] is not Ellipsis:
        return {"type": "array", "items": [hint_schema(a) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        return {"type": "array", **({"items": hint_schema(args[0])} if args else {})}
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        return {"type": "object"}
    return {}


def _json_value(value: Any) -> Any:
    """``value`` as JSON (tuples become lists); raises TypeError/ValueError if it has none."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(value)
    json.dumps(value, allow_nan=False)
    return value


def argument_schema(arg: Argument, ranges: Mapping[str, tuple] | None = None
                    ) -> dict[str, Any]:
    """One argument: its type, default, range and a description in words."""
    schema = hint_schema(arg.hint)
    text = arg.type_text
    if not arg.required:
        try:
            schema["default"] = _json_value(arg.default)
            text += f"; default {json.dumps(schema['default'])}"
        except (TypeError, ValueError):
            pass
    low, high = (ranges or {}).get(arg.name, (None, None))
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    schema["description"] = text
    return schema


def part_schema(registry: Registry, supplied: Sequence[str] = (),
                ranges: Mapping[str, tuple] | None = None) -> dict[str, Any]:
    """A part block: one ``oneOf`` branch per registered part, or its name alone."""
    branches: list[dict[str, Any]] = []
    short_names: list[str] = []
    prefixes: list[str] = []
    for entry in registry.entries():
        names = [entry.name, *entry.aliases]
        args = [a for a in arguments(entry.obj) if a.name not in supplied]
        required = [a.name for a in args if a.required and a.name != entry.prefix_arg]
        name_schema: dict[str, Any] = {"enum": names}
        if entry.prefix_arg:
            pattern = f"^(?:{'|'.join(re.escape(n) for n in names)}):.+$"
            prefixes.append(pattern)
            name_schema = {"anyOf": [name_schema, {"type": "string", "pattern": pattern}]}
        branch: dict[str, Any] = {
            "type": "object",
            "title": entry.display_name,
            "description": entry.description,
            "properties": {"name": name_schema,
                           **{a.name: argument_schema(a, ranges) for a in args}},
            "required": ["name", *required],
        }
        if entry.prefix_arg:  # {name: timm, model: x} or {name: "timm:x"}
            branch["anyOf"] = [{"required": [entry.prefix_arg]},
                               {"properties": {"name": {"type": "string",
                                                        "pattern": pattern}}}]
        if not accepts_any_key(entry.obj):
            branch["additionalProperties"] = False
        branches.append(branch)
        if not any(a.required for a in args):  # `timm` alone lacks its model: not a short form
            short_names += names
    short: list[dict[str, Any]] = [{"type": "string", "enum": short_names}] if short_names else []
    short += [{"type": "string", "pattern": p} for p in prefixes]
    return {"description": f"a {registry.kind}: {{name: ..., <arguments>}} or its name alone",
            "oneOf": [*short, *branches]}


def _settings_schema(cls: type, ranges: Mapping[str, tuple]) -> dict[str, Any]:
    return {"type": ["object", "null"], "description": (cls.__doc__ or "").strip().splitlines()[0],
            "additionalProperties": False,
            "properties": {a.name: argument_schema(a, ranges) for a in arguments(cls)}}


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe, from the registries as they are now (plugins included)."""
    from ..registry import TASKS
    from .recipe import PART_BLOCKS, RANGES, CheckpointSettings, TrainSettings

    defs = {key: part_schema(registry, supplied, RANGES.get(key, {}))
            for key, (registry, supplied) in PART_BLOCKS.items()}
    defs["loss"] = part_schema(LOSSES)
    defs["dataset"] = part_schema(DATASETS)
    defs["degradation"] = part_schema(DEGRADATIONS)
    steps = {"type": "array", "minItems": 1, "items": {"$ref": "#/definitions/degradation"},
             "description": "degradation steps that make the input from the target, in order"}
    for branch in defs["dataset"]["oneOf"]:  # a `degradations` list holds degradation parts
        props = branch.get("properties", {})
        if "degradations" in props:
            props["degradations"] = {"anyOf": [steps, {"type": "null"}]}
    empty = {"type": "object", "maxProperties": 0}
    data_ranges = RANGES.get("data", {})
    data = {
        "type": ["object", "null"],
        "description": "training and validation datasets, and the style image",
        "additionalProperties": False,
        "properties": {
            "train": {"anyOf": [{"$ref": "#/definitions/dataset"}, empty]},
            "val": {"anyOf": [{"$ref": "#/definitions/dataset"}, empty, {"type": "null"}]},
            "style_image": {"anyOf": [{"type": ["string", "null"]},
                                      {"type": "array", "items": {"type": "string"},
                                       "minItems": 2}],
                            "description": "an image file, or synthetic[:N] (a procedural "
                                           "texture); a list for a multi-style net (one per "
                                           "name in transform.styles)"},
            "style_size": {"type": ["integer", "null"], "default": 256,
                           **({"minimum": data_ranges["style_size"][0]}
                              if "style_size" in data_ranges else {})},
        },
    }
    properties: dict[str, Any] = {
        "name": {"type": "string", "description": "the run's name (default: the file name)"},
        "task": {"enum": TASKS.names(), "default": "sr",
                 "description": "the restoration task (percepkit list tasks)"},
        **{key: {"$ref": f"#/definitions/{key}"} for key in PART_BLOCKS},
        "losses": {"type": "array", "minItems": 1, "items": {"$ref": "#/definitions/loss"},
                   "description": "loss terms, each {name: ..., weight: ...} or a name"},
        "data": data,
        "train": _settings_schema(TrainSettings, RANGES.get("train", {})),
        "checkpoint": _settings_schema(CheckpointSettings, RANGES.get("checkpoint", {})),
        "val": {"type": ["object", "null"], "additionalProperties": False,
                "description": "what validation computes",
                "properties": {"metrics": {
                    "type": ["array", "null"], "items": {"type": "string"},
                    "description": "registered metrics (percepkit list metrics) or values the "
                                   "task computes itself (style: loss); default: the task's"},
                    "protocol": {
                        "type": ["object", "null"],
                        "description": "the level of a restoration task's benchmark protocol "
                                       "for validation inputs (denoise: {sigma: 25}, jpeg: "
                                       "{quality: 20}, deblur: {sigma, kernel_size, noise}); "
                                       "default: the task's"}}},
    }
    properties["train"]["properties"]["best"] = {
        "description": "the validation metric that picks best.safetensors",
        "anyOf": [{"type": "null"}, {"type": "string"}, {
            "type": "object", "additionalProperties": False, "required": ["metric"],
            "properties": {"metric": {"type": "string"},
                           "mode": {"enum": ["auto", "min", "max"], "default": "auto"}}}]}
    return {
        "$schema": DIALECT,
        "title": "percepkit recipe",
        "description": "A percepkit training recipe (generated by `percepkit recipe schema`).",
        "type": "object",
        "additionalProperties": False,
        "required": ["transform", "losses"],
        "properties": properties,
        "allOf": [{  # the data a task needs (style: a style image)
            "if": {"required": ["task"], "properties": {"task": {"enum": [e.name, *e.aliases]}}},
            "then": {"required": ["data"], "properties": {"data": {
                "required": list(e.obj.required_data),
                "properties": {k: {"anyOf": [{"type": "string", "minLength": 1},
                                             {"type": "array", "minItems": 1}]}
                               for k in e.obj.required_data}}}},
        } for e in TASKS.entries() if getattr(e.obj, "required_data", None)],
        "definitions": defs,
    }
