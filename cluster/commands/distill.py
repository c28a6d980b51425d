"""`aha distill`: on-policy distillation from a frozen teacher.

The GRPO loop (cluster/commands/train.py) runs as it is — the student samples on the rollout workers,
the scorers grade the answers (held-out accuracy, and the task term when distill.reward_weight
> 0), weights are pushed and staleness is checked as in `aha train` — with one more role: a
teacher actor (actors/teacher.py) returns its logprob of every token the student sampled, and
the student learns from the per-token reverse KL (learner/distill_loss.py). This module holds
what is distillation's own: the checks before anything starts (a teacher that exists, is a
causal LM, and shares the student's vocabulary), a group's teacher scores and per-token
advantages, and the step's distillation metrics.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cluster.recipe import Recipe, RecipeError


def distill(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Distil distill.teacher into model.path by `recipe`; returns the output directory."""
    from cluster.commands.train import train
    from cluster.startup.preflight import print_warnings

    if not recipe.distill.teacher:
        raise RecipeError("distill.teacher", "is required: aha distill needs the teacher model to learn from "
                          "(a hub id or a local directory such as a run's final/)")
    warnings = check_teacher(recipe)
    check_same_vocabulary(recipe, _student_tokenizer(recipe))  # before the run directory is claimed
    print_warnings(warnings)
    return train(recipe, resume=resume, overwrite=overwrite, distilling=True)


def check_teacher(recipe: Recipe) -> list[str]:
    """The teacher exists and is a causal LM; warning lines (a student larger than its teacher)."""
    from cluster.startup.preflight import check_model

    directory = check_model(recipe, recipe.distill.teacher, "distill.teacher")
    if directory is not None:
        _check_causal_lm(directory)
    warnings = []
    student_dir = Path(recipe.model.path)
    if directory is not None and student_dir.is_dir():
        sizes = parameter_count(student_dir), parameter_count(directory)
        if None not in sizes and sizes[0] > sizes[1]:
            warnings.append(f"the student ({sizes[0]:,} parameters) is larger than its teacher ({sizes[1]:,}); "
                            "distilling as asked")
    return warnings


def check_same_vocabulary(recipe: Recipe, student_tokenizer) -> None:
    """Refuse a teacher whose vocabulary is not the student's, saying where they differ: the
    teacher scores the student's token ids as they are."""
    from cluster.startup.preflight import load_tokenizer

    teacher = recipe.distill.teacher
    teacher_model = replace(recipe.model, path=teacher, tokenizer=recipe.distill.teacher_tokenizer, tiny=None,
                            pretrain=None)
    teacher_recipe = replace(recipe, model=teacher_model)
    difference = vocabulary_difference(load_tokenizer(teacher_recipe, teacher), student_tokenizer)
    if difference:
        raise RecipeError("distill.teacher", f"'{teacher}' has another vocabulary than the student "
                          f"'{recipe.model.path}': {difference}; aha distils between models of one tokenizer")


def _student_tokenizer(recipe: Recipe):
    """The student's tokenizer before the run: model.tokenizer or the model's own, and for a tiny
    model still to build the one every tiny model is built with."""
    from cluster.startup.preflight import load_tokenizer

    if not recipe.model.tokenizer and not Path(recipe.model.path).is_dir() and recipe.model.tiny is not None:
        from cluster.inputs.tiny_model import build_tokenizer

        return build_tokenizer()
    return load_tokenizer(recipe, recipe.model.path)


def _check_causal_lm(directory: Path) -> None:
    from cluster.inputs.model_files import read_config

    config = read_config(directory, "distill.teacher")
    architectures = config.get("architectures") or []
    if not any(str(name).endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        raise RecipeError("distill.teacher", f"'{directory}' is not a causal language model (its config.json "
                          f"names {architectures or 'no architectures'}); the teacher must score next tokens")


def vocabulary_difference(teacher, student) -> str | None:
    """Where two tokenizers' vocabularies differ, in words, or None when they are one."""
    ours, theirs = student.get_vocab(), teacher.get_vocab()
    if ours == theirs:
        if teacher.eos_token_id != student.eos_token_id:
            return (f"the end-of-sequence token is id {teacher.eos_token_id} for the teacher and "
                    f"{student.eos_token_id} for the student")
        return None
    size = f"{len(theirs)} tokens for the teacher and {len(ours)} for the student"
    for token, index in sorted(ours.items(), key=lambda item: item[1]):
        if theirs.get(token) != index:
            other = theirs.get(token)
            where = f"id {other} for the teacher" if other is not None else "absent from the teacher's"
            return f"{size}; token {token!r} is id {index} for the student and {where}"
    extra = next(token for token in theirs if token not in ours)
    return f"{size}; token {extra!r} (teacher id {theirs[extra]}) is absent from the student's"


def parameter_count(directory: Path) -> int | None:
    """Parameters in a model directory's safetensors files, read from their headers (None: no
    safetensors there)."""
    from safetensors import safe_open

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= size
                total += count
    return total
