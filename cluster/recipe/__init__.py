"""Recipes: the typed schema (`schema`, each key with its default, help and resume rule), loading
and overrides (`load`), range and combination checks (`checks`), the settings a training run
would learn nothing from (`learning_signal`), every key as data (`keys`) and its reference
(`reference`: `aha check --explain KEY`, docs/recipe-reference.md), what a resumed run may
change (`resume`), and placement planning against a described cluster (`placement`).

Light on purpose: nothing here imports torch, ray, vllm or deepspeed, nor any other part of
the project, so a recipe can be read and checked anywhere (tests/test_layout.py enforces it).
"""

from cluster.recipe.checks import RecipeError
from cluster.recipe.load import load_recipe, recipe_from_dict, recipe_to_dict
from cluster.recipe.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict", "recipe_to_dict"]
