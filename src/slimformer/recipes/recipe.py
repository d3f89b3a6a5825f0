"""Recipes: a YAML list of steps, each naming a method config and its fields.

    name: int8
    description: dynamic int8 weights and activations
    steps:
      - method: int8_dynamic
        targets: []

A file may also be a bare list of steps. Unknown keys anywhere are errors naming the key.
YAML is parsed with `yaml.safe_load`: recipes are data, never code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..core.config import MethodConfig, config_from_dict
from ..core.errors import ConfigError

RECIPE_KEYS = ("name", "description", "steps")


@dataclass
class Recipe:
    name: str
    steps: list[MethodConfig]
    description: str = ""
    source: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "steps": [s.to_dict() for s in self.steps]}


def builtin_recipes() -> dict[str, Path]:
    folder = resources.files("slimformer.recipes") / "builtin"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def parse_recipe(data, source: str = "<recipe>") -> Recipe:
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with 'steps' (or a list of steps); got {type(data).__name__}")
    for k in data:
        if k not in RECIPE_KEYS:
            raise ConfigError(f"{source}: unknown recipe key {k!r}; accepted: {', '.join(RECIPE_KEYS)}")
    steps = data.get("steps") or []
    if not isinstance(steps, list):
        raise ConfigError(f"{source}: 'steps' must be a list of steps")
    configs = []
    for i, step in enumerate(steps, 1):
        try:
            configs.append(config_from_dict(step))
        except ConfigError as e:
            raise ConfigError(f"{source} step {i}: {e}") from None
    name = str(data.get("name") or Path(source).stem)
    return Recipe(name=name, steps=configs, description=str(data.get("description", "")), source=source)


def load_recipe(recipe) -> Recipe:
    """A Recipe, a list of MethodConfigs, a dict, a built-in name, or a path to a YAML file."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, MethodConfig):
        recipe = [recipe]
    if isinstance(recipe, (list, tuple)) and all(isinstance(s, MethodConfig) for s in recipe):
        return Recipe(name="+".join(s.method for s in recipe) or "empty", steps=list(recipe), source="<api>")
    if isinstance(recipe, (dict, list)):
        return parse_recipe(recipe)
    name = str(recipe)
    builtins = builtin_recipes()
    if name in builtins:
        path = builtins[name]
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"recipe {name!r} is neither a built-in recipe ({', '.join(sorted(builtins))}) nor a file"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a recipe (not UTF-8 text); accepted: a YAML file with 'steps'") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or 'syntax error'})") from None
    if name in builtins:
        return parse_recipe(data, source=f"builtin:{name}")
    rec = parse_recipe(data, source=str(path))
    if not rec.steps:
        raise ConfigError(f"{path}: the recipe has no steps, so it would change nothing; accepted: at least one step "
                          "(to measure a model as it is: slimformer evaluate, or the built-in recipe baseline)")
    return rec
