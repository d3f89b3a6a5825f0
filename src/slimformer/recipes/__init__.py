from .recipe import Recipe, load_recipe, parse_recipe, builtin_recipes
from .result import CompressionResult, StepRecord
from .compress import compress, CompressOptions
from .pipeline import check_recipe, run_steps

__all__ = ["Recipe", "load_recipe", "parse_recipe", "builtin_recipes", "CompressionResult", "StepRecord",
           "compress", "CompressOptions", "run_steps", "check_recipe"]
