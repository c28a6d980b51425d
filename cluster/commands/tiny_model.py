"""`aha tiny-model`: a random-initialised tiny Qwen2 model and character tokenizer in a directory."""

from __future__ import annotations

from pathlib import Path

from cluster.recipe import RecipeError
from cluster.recipe.checks import check_tiny_model
from cluster.recipe.schema import RolloutConfig, TinyModelConfig


def tiny_model(out: str, tiny: TinyModelConfig, *, overwrite: bool) -> Path:
    """Write the model `tiny` describes to `out` (an empty or new directory, or one aha wrote
    a model into with `overwrite`); a bad option is a RecipeError naming it (--num-layers)."""
    from cluster.inputs.tiny_model import build_tiny_model, tiny_model_spec

    _check_tiny_options(tiny)
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise RecipeError("", f"'{target}' exists and is not empty; pass --overwrite to replace a model aha "
                          "wrote there, or choose another directory")
    try:
        return build_tiny_model(target, tiny_model_spec(tiny, RolloutConfig().max_model_len),
                                replace_pretrained=overwrite)
    except (ValueError, FileExistsError) as err:
        raise RecipeError("", str(err)) from None


def _check_tiny_options(tiny: TinyModelConfig) -> None:
    """The recipe's own rule for [model.tiny], the error naming the option: --num-layers."""
    try:
        check_tiny_model(tiny)
    except RecipeError as err:
        raise RecipeError("--" + err.key.rsplit(".", 1)[-1].replace("_", "-"), err.problem) from None
