"""Recipes: a list of typed steps, each one registered method with its validated options.

A method is registered once, in its own file (name -> config dataclass + apply function), and is
then reachable from Python, YAML recipes and the CLI with no other edit: `methods()` finds the
registering files by walking the algorithm packages, as llm-compressor finds its modifiers.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from .errors import NnslimError, bad_value, did_you_mean, short_repr

# Packages whose modules may register methods or packed layers (walked once, see methods()).
_ALGORITHM_PACKAGES = ("quant", "pruning", "distillation", "lowrank", "runtime")
_REGISTERS = ("register_method(", "register_packed(")


MAX_SEED = 2**32 - 1  # numpy's and torch's common seed range
MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class StepConfig:
    """Base of every method's options. Subclasses add typed fields and validate in __post_init__.

    Checked for every method before its own __post_init__, from the field annotations: types
    (Literal fields take only their listed values), numbers finite and within `ranges` (default:
    0..2^31-1; seeds 0..2^32-1), `ignore` entries valid scopes. A config holds only the options its
    method reads.
    """

    method: ClassVar[str] = ""
    ranges: ClassVar[dict[str, tuple[float, float]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_options", False):
            def __post_init__(self, _own=own):
                check_options(self)
                _own(self)
            __post_init__._checks_options = True
            cls.__post_init__ = __post_init__

    def __post_init__(self):
        check_options(self)

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The fields a user may set for this method."""
        return list(dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}


def check_options(config: StepConfig) -> None:
    """Type-check every field against its annotation (converting ints to floats and lists to tuples),
    then ranges and scope patterns; the first bad field is an error naming it and what is allowed."""
    import math

    from .graph.scope import check_patterns

    cls = type(config)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        value = _coerce(f.name, getattr(config, f.name), hints.get(f.name, Any))
        object.__setattr__(config, f.name, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise NnslimError(f"{f.name}={value!r} is not allowed; allowed: a finite number")
        lo, hi = cls.ranges.get(f.name, (0, MAX_SEED if f.name == "seed" else MAX_INT))
        if not lo <= value <= hi:
            raise NnslimError(f"{f.name}={short_repr(value)} is not allowed; allowed: {lo}..{hi}")
    if isinstance(getattr(config, "ignore", None), (tuple, list)):
        check_patterns(config.ignore)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[StepConfig]
    apply: Callable[[Any, StepConfig, Any], Any]
    description: str
    needs: str  # "torch" or "onnx": the kind of model the step takes
    produces: str
    verb: str | None  # the public verb that runs it alone: quantize | prune | distill (None: compress only)
    stage: str | None  # structure | sparsity | quantize | storage | export (see STAGES); None: training only
    trains: bool  # a training step: it trains through the compression state before it
    needs_training: bool  # its state (learned scores) only means something after a later training step
    deploys_as_onnx: bool = False  # its result (QDQ layers) is written as an ONNX export, even with no export step
    frozen: bool = False  # its layers hold packed codes that no training step can update (weight-only, W8A8)


METHODS: dict[str, Method] = {}


# The order compression state composes in: a step may follow steps of its own or an earlier stage.
# Structure goes first (it reshapes what later state is attached to), then masks, then quantizers (they
# wrap the masked weights), then storage and export. Training steps may come anywhere before storage.
STAGES = ("structure", "sparsity", "quantize", "storage", "export")
_VERB_STAGE = {"quantize": "quantize", "prune": "sparsity"}


def register_method(name: str, config_cls: type[StepConfig], description: str,
                    needs: str = "torch", produces: str = "torch", verb: str | None = None,
                    stage: str | None = None, trains: bool | None = None, needs_training: bool = False,
                    deploys_as_onnx: bool = False, frozen: bool = False):
    """Decorator registering apply(model, config, ctx) -> model under `name`.

    apply may change `model` in place (the pipeline hands each step its own copy) and returns the result.
    stage defaults from the verb (quantize -> quantize, prune -> sparsity); distill steps train.
    """
    stage = stage if stage is not None else _VERB_STAGE.get(verb or "")
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {STAGES}")
    trains = (verb == "distill") if trains is None else trains

    def wrap(fn):
        if name in METHODS and METHODS[name].config_cls is not config_cls:
            raise ValueError(f"method {name!r} is registered twice")
        config_cls.method = name
        METHODS[name] = Method(name, config_cls, fn, description, needs, produces, verb, stage, trains,
                               needs_training, deploys_as_onnx, frozen)
        return fn

    return wrap


_DISCOVERED = False


def methods() -> dict[str, Method]:
    """Every registered method, after importing each module of the algorithm packages that registers one."""
    global _DISCOVERED
    if not _DISCOVERED:
        root = Path(__file__).parent
        for package in _ALGORITHM_PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                text = path.read_text(encoding="utf-8")
                if any(r in text for r in _REGISTERS) and "def register_" not in text:
                    rel = path.relative_to(root).with_suffix("")
                    importlib.import_module("nnslim." + ".".join(rel.parts))
        _DISCOVERED = True
    return METHODS


def method_of(config: StepConfig) -> Method:
    """The registered method a config belongs to."""
    if not isinstance(config, StepConfig):
        raise NnslimError(f"config of type {type(config).__name__} is not allowed; allowed: a method config "
                          "such as nnslim.Int8Config() (see nnslim.methods())")
    methods()
    name = type(config).method
    if name not in METHODS or METHODS[name].config_cls is not type(config):
        raise NnslimError(f"config of type {type(config).__name__} is not a registered method's config")
    return METHODS[name]


def get_method(name: str) -> Method:
    table = methods()
    if name not in table:
        raise bad_value("method", name, list(table))
    return table[name]


def _literal_name(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return ", ".join(_literal_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(where: str, value: Any, tp) -> Any:
    """Check `value` against a (simple) annotation; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        for allowed in args:  # 1 == True in Python: compare types too
            if value == allowed and type(value) is type(allowed):
                return value
            if isinstance(allowed, float) and type(value) is int and value == allowed:
                return allowed
        raise NnslimError(f"{where}={short_repr(value)} is not allowed; allowed: "
                          f"{', '.join(_literal_name(a) for a in args)}")
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
        names = " or ".join(map(_type_name, (a for a in args if a is not type(None))))
        names += " or null" if type(None) in args else ""
        if any(typing.get_origin(a) is typing.Literal for a in args):
            raise NnslimError(f"{where}={short_repr(value)} is not allowed; allowed: {names}")
        raise NnslimError(f"{where}={short_repr(value)} has the wrong type; expected {names}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise NnslimError(f"{where}={short_repr(value)} has the wrong type; expected a list")
        inner = args[0] if args else Any
        return tuple(_coerce(f"{where}[{i}]", v, inner) for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise NnslimError(f"{where}={short_repr(value)} has the wrong type; expected {_type_name(tp)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise NnslimError(f"{where}={short_repr(value)} has the wrong type; expected {_type_name(tp)}")
    return value


def make_step(spec: dict[str, Any], where: str = "step") -> StepConfig:
    """Build a validated StepConfig from {'method': NAME, option: value, ...}."""
    if not isinstance(spec, dict):
        raise NnslimError(f"{where} must be a mapping with a 'method' key, got {type(spec).__name__}")
    if "method" not in spec:
        raise NnslimError(f"{where}: missing key 'method'; allowed methods: {', '.join(sorted(methods()))}")
    name = spec["method"]
    if not isinstance(name, str):
        raise NnslimError(f"{where}.method={short_repr(name)} must be a string")
    try:
        method = get_method(name)
    except NnslimError as e:
        raise NnslimError(f"{where}.{e}") from None
    cls = method.config_cls
    hints = _hints(cls)
    fields = {f.name: f for f in cls.options()}
    options = {}
    for key, value in spec.items():
        if key == "method":
            continue
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "(none: this method takes no options)"
            raise NnslimError(f"{where}: unknown key {short_repr(key)} for method {name!r};"
                              f"{did_you_mean(key, allowed.split(', '))} allowed: {allowed}")
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
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise NnslimError(f"seed={short_repr(self.seed)} is not allowed; allowed: an integer 0..{MAX_SEED}")

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
            raise NnslimError(f"{where}: unknown key {key!r};{did_you_mean(key, RECIPE_KEYS)} allowed: "
                              f"{', '.join(RECIPE_KEYS)}")
    steps = obj.get("steps")
    if not isinstance(steps, list) or not steps:
        raise NnslimError(f"{where}.steps must be a non-empty list of steps")
    seed = _coerce(f"{where}.seed", obj.get("seed", 0), int)
    name = _coerce(f"{where}.name", obj.get("name", ""), str)
    return Recipe(tuple(make_step(s, f"{where}.steps[{i}]") for i, s in enumerate(steps)), seed, name)


MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_VALUES = 100_000  # after YAML aliases are expanded


def _count_values(obj: Any, budget: int) -> int:
    """Values in obj with shared (aliased) parts counted each time they appear; stops past `budget`."""
    stack, count = [obj], 0
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def yaml_load(text: str, where: str = "recipe"):
    """yaml.safe_load without YAML 1.1's base-60 numbers (so `pattern: 2:4` stays the string "2:4"),
    with exponent floats like 1e-3 read as numbers, and bounded: at most 1 MB of text and 100000 values
    once aliases are expanded. Any malformed input is an NnslimError naming `where`."""
    import re

    import yaml

    if len(text) > MAX_RECIPE_BYTES:
        raise NnslimError(f"{where} is {len(text)} bytes; allowed: at most {MAX_RECIPE_BYTES}")

    class Loader(yaml.SafeLoader):
        pass

    numeric = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    Loader.yaml_implicit_resolvers = {k: [(t, rx) for t, rx in v if t not in numeric]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    digits = r"[0-9](_?[0-9])*"
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9](_?[0-9])*)$"),
                                 list("-+0123456789"))
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(rf"^[-+]?(({digits})?\.{digits}|{digits}\.?)([eE][-+]?[0-9]+)?$"
                   r"|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
        list("-+0123456789."))
    try:
        obj = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise NnslimError(f"{where} is not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # a scalar its constructor refused
        raise NnslimError(f"{where} has a value YAML cannot read: {short_repr(str(e), 200)}") from None
    if _count_values(obj, MAX_RECIPE_VALUES) > MAX_RECIPE_VALUES:
        raise NnslimError(f"{where} expands to more than {MAX_RECIPE_VALUES} values (YAML aliases?); "
                          "a recipe is a short list of steps")
    return obj


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise NnslimError(f"--recipe={str(path)!r}: file not found")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise NnslimError(f"--recipe={str(path)!r} is {path.stat().st_size} bytes; allowed: at most "
                          f"{MAX_RECIPE_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise NnslimError(f"--recipe={str(path)!r} cannot be read as UTF-8 text: {e}") from None
    return parse_recipe(yaml_load(text, f"--recipe={str(path)!r}"), where=path.name)


def as_recipe(recipe: Any, seed: int | None = None) -> Recipe:
    """Accept a Recipe, a StepConfig, a list of StepConfigs / method names / step dicts, a method name, or a YAML
    path."""
    if isinstance(recipe, Recipe):
        out = recipe
    elif isinstance(recipe, StepConfig):
        out = Recipe((recipe,))
    elif isinstance(recipe, str) and (recipe.endswith((".yaml", ".yml")) or Path(recipe).is_file()):
        out = load_recipe(recipe)
    elif isinstance(recipe, str):
        out = Recipe((make_step({"method": recipe}, "method"),))
    elif isinstance(recipe, dict) and "method" in recipe:  # one step's mapping
        out = Recipe((make_step(recipe, "recipe"),))
    elif isinstance(recipe, Path):
        out = load_recipe(recipe)
    elif isinstance(recipe, (list, tuple)) and recipe and all(isinstance(s, (StepConfig, str, dict)) for s in recipe):
        out = Recipe(tuple(s if isinstance(s, StepConfig) else make_step(s if isinstance(s, dict) else {"method": s},
                                                                           f"recipe[{i}]")
                           for i, s in enumerate(recipe)))
    else:
        out = parse_recipe(recipe)
    if seed is not None:
        out = dataclasses.replace(out, seed=seed)
    return out
