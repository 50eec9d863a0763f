"""Recipes: a list of typed steps, each one registered method with its validated options.

A method is registered once (name -> config dataclass + apply function) and is then reachable
from Python, YAML recipes and the CLI with no extra wiring.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from .errors import NnslimError, bad_value

# Modules that register built-in methods when imported.
_BUILTIN_METHOD_MODULES = ("nnslim.quant.cast", "nnslim.quant.ptq", "nnslim.quant.weight_only.methods",
                           "nnslim.quant.w8a8", "nnslim.prune.oneshot", "nnslim.prune.structured",
                           "nnslim.prune.gradual", "nnslim.prune.storage", "nnslim.distill.trainer",
                           "nnslim.lowrank.svd", "nnslim.runtime.onnx_methods")


@dataclass(frozen=True)
class StepConfig:
    """Base of every method's options. Subclasses add typed fields and validate in __post_init__."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[StepConfig]
    apply: Callable[[Any, StepConfig, Any], Any]
    description: str
    needs: str  # "torch" or "onnx": the kind of model the step takes
    produces: str


METHODS: dict[str, Method] = {}


def register_method(name: str, config_cls: type[StepConfig], description: str,
                    needs: str = "torch", produces: str = "torch"):
    """Decorator registering apply(model, config, ctx) -> model under `name`."""

    def wrap(fn):
        config_cls.method = name
        METHODS[name] = Method(name, config_cls, fn, description, needs, produces)
        return fn

    return wrap


def methods() -> dict[str, Method]:
    for module in _BUILTIN_METHOD_MODULES:
        importlib.import_module(module)
    return METHODS


def get_method(name: str) -> Method:
    table = methods()
    if name not in table:
        raise bad_value("method", name, list(table))
    return table[name]


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(where: str, value: Any, tp) -> Any:
    """Check `value` against a (simple) annotation; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(where, value, arg)
            except NnslimError as e:
                errors.append(str(e))
        raise NnslimError(f"{where}={value!r} has the wrong type; expected {' or '.join(map(_type_name, args))}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise NnslimError(f"{where}={value!r} has the wrong type; expected a list")
        inner = args[0] if args else Any
        return tuple(_coerce(f"{where}[{i}]", v, inner) for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise NnslimError(f"{where}={value!r} has the wrong type; expected {tp.__name__}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise NnslimError(f"{where}={value!r} has the wrong type; expected {tp.__name__}")
    return value


def make_step(spec: dict[str, Any], where: str = "step") -> StepConfig:
    """Build a validated StepConfig from {'method': NAME, option: value, ...}."""
    if not isinstance(spec, dict):
        raise NnslimError(f"{where} must be a mapping with a 'method' key, got {type(spec).__name__}")
    if "method" not in spec:
        raise NnslimError(f"{where}: missing key 'method'; allowed methods: {', '.join(sorted(methods()))}")
    name = spec["method"]
    if not isinstance(name, str):
        raise NnslimError(f"{where}.method={name!r} must be a string")
    try:
        method = get_method(name)
    except NnslimError as e:
        raise NnslimError(f"{where}.{e}") from None
    cls = method.config_cls
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    options = {}
    for key, value in spec.items():
        if key == "method":
            continue
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "(none: this method takes no options)"
            raise NnslimError(f"{where}: unknown key {key!r} for method {name!r}; allowed: {allowed}")
        options[key] = _coerce(f"{where}.{key}", value, hints[key])
    try:
        return cls(**options)
    except NnslimError as e:
        raise NnslimError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Recipe:
    steps: tuple[StepConfig, ...]
    seed: int = 0
    name: str = ""

    def __post_init__(self):
        if not self.steps:
            raise NnslimError("recipe has no steps; give at least one step with a 'method' key")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "steps": [s.to_dict() for s in self.steps]}


RECIPE_KEYS = ("name", "seed", "steps")


def parse_recipe(obj: Any, where: str = "recipe") -> Recipe:
    """A recipe from parsed YAML: a list of steps, or {steps: [...], seed: N, name: S}."""
    if isinstance(obj, (list, tuple)):
        obj = {"steps": list(obj)}
    if not isinstance(obj, dict):
        raise NnslimError(f"{where} must be a list of steps or a mapping with key 'steps', "
                          f"got {type(obj).__name__}")
    for key in obj:
        if key not in RECIPE_KEYS:
            raise NnslimError(f"{where}: unknown key {key!r}; allowed: {', '.join(RECIPE_KEYS)}")
    steps = obj.get("steps")
    if not isinstance(steps, list) or not steps:
        raise NnslimError(f"{where}.steps must be a non-empty list of steps")
    seed = _coerce(f"{where}.seed", obj.get("seed", 0), int)
    name = _coerce(f"{where}.name", obj.get("name", ""), str)
    return Recipe(tuple(make_step(s, f"{where}.steps[{i}]") for i, s in enumerate(steps)), seed, name)


def yaml_load(text: str):
    """yaml.safe_load without YAML 1.1's base-60 numbers (so `pattern: 2:4` stays the string "2:4"),
    and with exponent floats like 1e-3 read as numbers."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    numeric = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    Loader.yaml_implicit_resolvers = {k: [(t, rx) for t, rx in v if t not in numeric]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"),
                                 list("-+0123456789"))
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(([0-9][0-9_]*)?\.[0-9_]*([eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+)$"
                   r"|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
        list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise NnslimError(f"--recipe={str(path)!r}: file not found")
    try:
        obj = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        raise NnslimError(f"--recipe={str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_recipe(obj, where=path.name)


def as_recipe(recipe: Any, seed: int | None = None) -> Recipe:
    """Accept a Recipe, a StepConfig, a list of StepConfigs/dicts, a method name, or a YAML path."""
    if isinstance(recipe, Recipe):
        out = recipe
    elif isinstance(recipe, StepConfig):
        out = Recipe((recipe,))
    elif isinstance(recipe, str) and (recipe.endswith((".yaml", ".yml")) or Path(recipe).is_file()):
        out = load_recipe(recipe)
    elif isinstance(recipe, str):
        out = Recipe((make_step({"method": recipe}, "method"),))
    elif isinstance(recipe, Path):
        out = load_recipe(recipe)
    elif isinstance(recipe, (list, tuple)) and all(isinstance(s, StepConfig) for s in recipe):
        out = Recipe(tuple(recipe))
    else:
        out = parse_recipe(recipe)
    if seed is not None:
        out = dataclasses.replace(out, seed=seed)
    return out


@dataclass
class Context:
    """What steps may use besides the model: the testbed (data, example inputs), a work dir, the seed."""
    testbed: Any
    workdir: Path
    seed: int = 0
    calibration: list | None = None
    notes: list[str] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)  # extra report tables, e.g. sensitivity
    teacher: Any = None  # the recipe's input model (distillation teacher)
