"""A recipe's prompts: its dataset rows, and the token ids the rollout workers are given."""

from __future__ import annotations

from cluster.inputs.data import DataError, PromptRow, load_prompt_rows, render_prompt


def load_rows(recipe, path: str) -> list[PromptRow]:
    """The rows of the dataset at `path`, read with the recipe's `[data]` settings."""
    data = recipe.data
    return load_prompt_rows(path, prompt_column=data.prompt_column, columns=data.columns or None,
                            file_format=data.file_format)


def encode_prompts(recipe, tokenizer, rows: list[PromptRow]) -> list[list[int]]:
    """Template and tokenize prompts; a prompt over `data.max_prompt_tokens` is an error."""
    data = recipe.data
    encoded = []
    for row in rows:
        text = render_prompt(row.prompt, data.template, tokenizer=tokenizer, system_prompt=data.system_prompt)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > data.max_prompt_tokens:
            raise DataError(f"data file '{data.train_path}': row {row.index} is {len(ids)} tokens after the "
                            f"template, over data.max_prompt_tokens={data.max_prompt_tokens}")
        encoded.append(ids)
    return encoded
