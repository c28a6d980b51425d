"""A recipe's prompts: its dataset rows, and the token ids the rollout workers are given."""

from __future__ import annotations

from cluster.inputs.data import DataError, PromptRow, load_prompt_rows, render_prompt, row_label


def load_rows(recipe, path: str) -> list[PromptRow]:
    """The rows of the dataset at `path`, read with the recipe's `[data]` settings."""
    data = recipe.data
    return load_prompt_rows(path, prompt_column=data.prompt_column, columns=data.columns or None,
                            file_format=data.file_format)


def encode_prompts(recipe, tokenizer, rows: list[PromptRow]) -> list[list[int]]:
    """Template and tokenize prompts; a prompt over `data.max_prompt_tokens` is an error that
    names the row's own file (train or held-out)."""
    data = recipe.data
    texts = [render_prompt(row.prompt, data.template, tokenizer=tokenizer, system_prompt=data.system_prompt)
             for row in rows]
    # One call for the batch: a fast tokenizer encodes a list in parallel, in Rust.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    for row, ids in zip(rows, encoded):
        if len(ids) > data.max_prompt_tokens:
            source = row.source or data.train_path
            raise DataError(f"data file '{source}': {row_label(source, row.index, data.file_format)} is "
                            f"{len(ids)} tokens after the template, over data.max_prompt_tokens="
                            f"{data.max_prompt_tokens}")
    return [list(ids) for ids in encoded]
