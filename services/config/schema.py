"""The run configuration: ``default_config.yaml`` merged with a person's file, then checked.

Why a schema of our own rather than "whatever YAML says": a typo in a hand-written config
(``shot: 5``, ``image_sise: 256``) would otherwise be ignored in silence and a run of minutes
would train with the default. So every key is known here, and validation reports EVERY problem
at once, one line each, naming the file, the dotted key and what is wrong (unknown key with a
"did you mean", wrong type, out of range, unknown model), so a config is fixed in one go.

What is checked where:

* the layout of the sections and the plain keys (types, ranges, choices): here;
* ``model.name`` and ``model.params``: the model registry (``registry.names()``,
  ``spec(name).default_config``, ``registry.validate``), so a model added to the zoo is
  accepted with its own parameters without touching this file;
* ``augmentation.transforms``: the engine's augmentation schema (the one the Augmentation page
  and presets use), its problems re-keyed under ``augmentation.``.

Layers: the shipped defaults first, then a person's file (or a tasks file's ``defaults`` and
one task), then command-line flags; each later layer's mappings are merged key by key over the
earlier ones, lists and plain values replace. One exception: a layer that names ANOTHER model
in ``model.name`` starts ``model.params`` afresh (the earlier parameters belong to the earlier
model and would be unknown keys of the new one).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

#: The shipped, documented defaults (repository root).
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "default_config.yaml"
SECTIONS = ("model", "data", "augmentation", "post_processing")
#: Threshold rules of ``engine.thresholds`` a file run can apply after training ("auto": the
#: training's own rule, see ``services.training.fit.choose_threshold``).
THRESHOLD_METHODS = ("auto", "f1_optimal", "mean_k_sigma", "percentile", "manual")
LAYOUTS = ("auto", "mvtec", "flat")
SEED_MAX = 2**32 - 1  # numpy's and the augmentation schema's seed range

Kind = Literal["str", "int", "number", "choice", "list", "mapping"]


@dataclass(frozen=True)
class Field:
    """One plain key: its kind, whether null is allowed, bounds or choices."""

    kind: Kind
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


#: Every key of the config; nested dicts are mappings of keys. ``model.name``,
#: ``model.params`` and ``augmentation.transforms`` get their deeper checks from the registry
#: and the augmentation schema (see :func:`validate`).
SCHEMA: dict[str, Any] = {
    "model": {"name": Field("str"), "params": Field("mapping", nullable=True)},
    "data": {
        "path": Field("str", nullable=True),
        "layout": Field("choice", choices=LAYOUTS),
        "shots": Field("int", nullable=True, low=1),
        "seed": Field("int", low=0, high=SEED_MAX),
    },
    "augmentation": {
        "preset": Field("str"),
        "transforms": Field("list", nullable=True),
        "copies": Field("int", low=1, high=16),
        "seed": Field("int", low=0, high=SEED_MAX),
    },
    "post_processing": {
        "threshold": {
            "method": Field("choice", choices=THRESHOLD_METHODS),
            "k": Field("number", low=0.0, high=10.0),
            "q": Field("number", low=0.0, high=100.0),
            "value": Field("number", nullable=True),
        },
    },
}


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` holds one full line per problem
    (``FILE: dotted.key: what is wrong``). ``str()`` is every line, the first one first, so
    a caller that shows one line still shows a useful one."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Layer:
    """One source of values: ``source`` names it in messages (a file path, "command line"),
    ``prefix`` is where the values sit inside that file (``tasks[1].``), ``base_dir`` is what
    a relative ``data.path`` in it is relative to (the file's folder)."""

    source: str
    values: Mapping[str, Any]
    prefix: str = ""
    base_dir: Path | None = None


@dataclass
class Config:
    """A validated, merged config: ``values`` (plain nested dicts, ``data.path`` absolute)
    and the layers it came from (for messages about it later, e.g. at run time)."""

    values: dict[str, Any]
    layers: list[Layer] = field(default_factory=list)

    def where(self, key: str) -> str:
        """``FILE: prefixed.key`` of the layer that set ``key`` (for run-time messages)."""
        layer = _owner(self.layers, key)
        return f"{layer.source}: {layer.prefix}{key}"


# --------------------------------------------------------------------------- reading YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the LAST of two equal keys in silence; a config with ``shots``
    twice is a mistake to name, not a value to guess."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                       deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str | int | float | bool) or key is None:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_mapping)


def read_yaml(path: str | Path) -> Any:
    """The parsed content of a YAML file (safe loader, duplicate keys refused); a missing file
    or a syntax error is a :class:`ConfigError` naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot be read ({exc})"]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = exc.problem or exc.context or "not valid YAML"
        raise ConfigError([f"{path}: {where}{what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML ({exc})"]) from None


def file_layer(path: str | Path, content: Any | None = None, prefix: str = "") -> Layer:
    """A layer from a YAML file (read now unless ``content`` is given). An empty file is an
    empty layer; anything but a mapping at the top is refused."""
    path = Path(path)
    raw = read_yaml(path) if content is None else content
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: {prefix.rstrip('.') or 'top level'}: expected a mapping "
                           f"of sections ({', '.join(SECTIONS)}), got {_kind_of(raw)}"])
    return Layer(str(path), raw, prefix, path.resolve().parent)


# --------------------------------------------------------------------------- merging


def merge(layers: Sequence[Layer]) -> dict[str, Any]:
    """The layers' values merged in order (see the module docstring), as fresh dicts."""
    merged: dict[str, Any] = {}
    for layer in layers:
        # ``augmentation:`` with nothing under it changes nothing
        values = {k: v for k, v in layer.values.items() if not (v is None and k in SECTIONS)}
        model = values.get("model")
        old = merged.get("model")
        if (isinstance(model, dict) and isinstance(old, dict) and "name" in model
                and model["name"] != old.get("name")):
            old["params"] = {}  # another model: the earlier parameters are not its own
        merged = _merge(merged, values)
    return merged


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def _parts(key: str) -> list[str]:
    """Mapping keys of a dotted key, up to the first list index: ``a.b[0].c`` -> [a, b]."""
    return [p for p in key.split("[", 1)[0].split(".") if p]


def _owner(layers: Sequence[Layer], key: str) -> Layer:
    """The last layer that sets ``key`` (or the longest part of it); the first layer (the
    defaults) when none does: a key missing everywhere is missing from the defaults."""
    parts = _parts(key)
    for depth in range(len(parts), 0, -1):
        for layer in reversed(layers):
            node: Any = layer.values
            for part in parts[:depth]:
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                return layer
    return layers[0]


# --------------------------------------------------------------------------- checking


def _kind_of(value: Any) -> str:
    """What a value is, in the words a config's author uses."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (yes/no)"
    if isinstance(value, int):
        return f"{value} (a whole number)"
    if isinstance(value, float):
        return f"{value} (a number)"
    if isinstance(value, str):
        return f"{value!r} (text)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def did_you_mean(word: str, allowed: Sequence[str], what: str = "allowed") -> str:
    """``; did you mean 'x'? (allowed: ...)`` or `` (allowed: ...)``: the tail of a message
    about an unknown name, the nearest known one first when there is one."""
    close = difflib.get_close_matches(str(word), list(allowed), n=1, cutoff=0.6)
    known = f"({what}: {', '.join(allowed)})" if allowed else "(none allowed here)"
    return f"; did you mean {close[0]!r}? {known}" if close else f" {known}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _bound(value: float | None) -> str:
    """A bound as people write it: ``4294967295``, ``0``, ``2.5`` (never ``4.29497e+09``)."""
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


def _check_field(spec: Field, value: Any) -> str | None:
    """What is wrong with ``value`` for ``spec``, or None."""
    if value is None:
        return None if spec.nullable else f"must be set, got {_kind_of(value)}"
    expected = {"str": ("text", lambda v: isinstance(v, str)),
                "choice": ("text", lambda v: isinstance(v, str)),
                "int": ("a whole number", _is_int),
                "number": ("a number", _is_number),
                "list": ("a list", lambda v: isinstance(v, list)),
                "mapping": ("a mapping", lambda v: isinstance(v, dict))}[spec.kind]
    if not expected[1](value):
        return f"expected {expected[0]}" + (" or null" if spec.nullable else "") \
            + f", got {_kind_of(value)}"
    if spec.kind == "str" and not value.strip():
        return "must not be empty"
    if spec.kind == "choice" and value not in spec.choices:
        return f"{value!r} is not allowed{did_you_mean(value, spec.choices)}"
    if spec.kind in ("int", "number"):
        low, high = spec.low, spec.high
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                return f"{value} is out of range: must be at least {_bound(low)}"
            return (f"{value} is out of range: must be between {_bound(low)} and "
                    f"{_bound(high)}")
    return None


class _Problems:
    """Problems collected while checking, each attributed to the layer that set the key."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = layers
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        layer = _owner(self.layers, key)
        self.lines.append(f"{layer.source}: {layer.prefix}{key}: {message}")


def _check_tree(schema: Mapping[str, Any], values: Any, path: str, problems: _Problems
                ) -> None:
    """Unknown keys, missing keys, and plain fields, recursively."""
    if not isinstance(values, dict):
        problems.add(path, f"expected a mapping of {', '.join(schema)}, got {_kind_of(values)}")
        return
    for key in values:
        if key not in schema:
            problems.add(f"{path}.{key}" if path else str(key),
                         f"unknown key{did_you_mean(str(key), list(schema))}")
    for key, spec in schema.items():
        dotted = f"{path}.{key}" if path else key
        if key not in values:
            problems.add(dotted, "missing" + ("" if path else " section"))
        elif isinstance(spec, dict):
            _check_tree(spec, values[key], dotted, problems)
        else:
            problem = _check_field(spec, values[key])
            if problem:
                problems.add(dotted, problem)


def _param_type_problem(default: Any, value: Any) -> str | None:
    """A model parameter's value against the type of its registry default."""
    if default is None:
        return None
    if isinstance(default, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, what = _is_int(value), "a whole number"
    elif isinstance(default, float):
        ok, what = _is_number(value), "a number"
    elif isinstance(default, str):
        ok, what = isinstance(value, str), "text"
    elif isinstance(default, list | tuple):
        ok, what = isinstance(value, list), "a list"
    elif isinstance(default, dict):
        ok, what = isinstance(value, dict), "a mapping"
    else:
        return None
    return None if ok else f"expected {what}, got {_kind_of(value)}"


def _check_model(model: Any, problems: _Problems) -> None:
    """``model.name`` against the registry, ``model.params`` against that model's defaults
    and ``registry.validate`` (key by key, so every bad parameter gets its own line)."""
    from engine.models import registry

    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return  # already reported by the plain checks
    name = model["name"]
    if name not in registry.names():
        problems.add("model.name", f"unknown model {name!r}"
                     + did_you_mean(name, registry.names(), "known"))
        return
    params = model.get("params") or {}
    if not isinstance(params, dict):
        return
    defaults = registry.spec(name).default_config
    good: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"model.params.{key}"
        if key not in defaults:
            problems.add(dotted, f"unknown parameter of {name}"
                         + did_you_mean(str(key), list(defaults)))
            continue
        problem = _param_type_problem(defaults[key], value)
        if problem is None:
            try:
                registry.validate(name, {key: value})
            except (ValueError, TypeError) as exc:
                problem = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
        if problem:
            problems.add(dotted, problem)
        else:
            good[key] = value
    if len(good) == len(params):  # each one fine alone; a combination may still be refused
        try:
            registry.validate(name, good)
        except (ValueError, TypeError) as exc:  # without parameters: the model itself
            problems.add("model.params" if good else "model.name",
                         str(exc).strip().splitlines()[0])


def _check_transforms(augmentation: Any, problems: _Problems) -> None:
    """``augmentation.transforms`` through the engine's augmentation schema (the presets'
    own validation), problems re-keyed under ``augmentation.``."""
    if not isinstance(augmentation, dict):
        return
    transforms = augmentation.get("transforms")
    if not isinstance(transforms, list) or not transforms:
        return
    from engine.augment import TRANSFORMS, AugmentConfigError, validate_config

    seed = augmentation.get("seed")
    seed = seed if _is_int(seed) and 0 <= seed <= SEED_MAX else 0  # its own line already
    try:
        validate_config({"version": 1, "seed": seed, "transforms": transforms})
    except AugmentConfigError as exc:
        for problem in exc.problems:
            key, _, message = problem.partition(": ")
            unknown = re.match(r"unknown transform (.+?) \(known: ", message)
            if unknown:  # the nearest name first, as for every other unknown name here
                message = f"unknown transform {unknown.group(1)}" + did_you_mean(
                    unknown.group(1).strip("'\""), list(TRANSFORMS), "known")
            problems.add(f"augmentation.{key}", message or problem)


def _check_rules(values: dict[str, Any], problems: _Problems) -> None:
    """Keys that only make sense together."""
    threshold = (values.get("post_processing") or {}).get("threshold")
    if not isinstance(threshold, dict):
        return
    method, value = threshold.get("method"), threshold.get("value")
    if method == "manual" and value is None:
        problems.add("post_processing.threshold.method",
                     "manual needs post_processing.threshold.value: the raw score at or above "
                     "which a part is a defect")
    elif method in THRESHOLD_METHODS and method != "manual" and value is not None:
        problems.add("post_processing.threshold.value",
                     f"is only read when method is manual, but method is {method!r}: set "
                     "method: manual or remove the value")


def validate(layers: Sequence[Layer]) -> Config:
    """Merge ``layers`` and check the result; :class:`ConfigError` lists every problem.

    A relative ``data.path`` is made absolute against the folder of the file that set it.
    """
    values = merge(layers)
    problems = _Problems(layers)
    _check_tree(SCHEMA, values, "", problems)
    _check_model(values.get("model"), problems)
    _check_transforms(values.get("augmentation"), problems)
    _check_rules(values, problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    if values["model"]["params"] is None:
        values["model"]["params"] = {}
    if values["augmentation"]["transforms"] is None:
        values["augmentation"]["transforms"] = []
    path = values["data"]["path"]
    if path is not None:
        base = _owner(layers, "data.path").base_dir or Path.cwd()
        values["data"]["path"] = str((base / Path(path).expanduser()).resolve())
    return Config(values, list(layers))


def default_layer(path: str | Path | None = None) -> Layer:
    """The shipped defaults (``default_config.yaml``) as the first layer."""
    return file_layer(path or DEFAULT_CONFIG_PATH)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                defaults: str | Path | None = None) -> Config:
    """The defaults, then the file at ``path`` (if any), then ``overrides`` (command-line
    flags, named "command line" in messages), validated together."""
    layers = [default_layer(defaults)]
    if path is not None:
        layers.append(file_layer(path))
    if overrides:
        layers.append(Layer("command line", overrides))
    return validate(layers)


def leaf_keys(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of every plain value (lists count as one value), depth first."""
    out = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += leaf_keys(value, dotted + ".")
        else:
            out.append(dotted)
    return out

