"""The demo's base-model pre-training: corpus text, held-out exclusion, schedule, caching, and a
short real run that lowers the loss and writes a loadable model."""

from __future__ import annotations

import json

import pytest

from cluster.recipe import load_recipe
from cluster.inputs.prepare import held_out_prompts, prepare_data, prepare_model
from cluster.inputs.pretrain import (
    RECORD,
    corpus_batch,
    hasty_solution,
    lr_at,
    parse_terms,
    worked_solution,
)

RECIPE = """
[model]
path = "{out}/base"
[model.tiny]
hidden_size = 64
num_layers = 1
[model.pretrain]
steps = {steps}
batch_size = 16
lr = 3e-3
warmup_steps = 2
worked_fraction = 0.5
[data]
train_path = "{out}/train.parquet"
eval_path = "{out}/eval.parquet"
template = "{{prompt}}=? <think>"
max_prompt_tokens = 32
[data.synthetic]
task = "chain_sum"
train_rows = 50
eval_rows = 40
min_terms = 2
max_terms = 3
max_term = 4
[rollout]
max_model_len = 128
max_new_tokens = 48
[reward]
weights = {{ arithmetic = 1.0 }}
[cluster]
num_cpus = 4
"""


def make_recipe(tmp_path, steps=3, *overrides):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.format(out=tmp_path, steps=steps))
    return load_recipe(path, list(overrides))


def test_solutions_are_exact_text():
    assert parse_terms("4+7+2+9") == [4, 7, 2, 9]
    assert worked_solution([4, 7, 2, 9]) == "4+7=11 11+2=13 13+9=22</think><answer>22</answer>"
    assert worked_solution([3, 5]) == "3+5=8</think><answer>8</answer>"
    assert hasty_solution([4, 7, 2, 9]) == "</think><answer>11</answer>"


@pytest.mark.parametrize("prompt", ["", "7", "4+x", "4++2", "What is 4 + 7?"])
def test_parse_terms_rejects_other_prompts(prompt):
    with pytest.raises(ValueError, match="not a chain-sum prompt"):
        parse_terms(prompt)


def test_lr_warms_up_then_decays_to_a_tenth():
    peak = 1e-3
    assert lr_at(0, steps=100, warmup=10, peak=peak) == pytest.approx(1e-4)
    assert lr_at(9, steps=100, warmup=10, peak=peak) == pytest.approx(peak)
    assert lr_at(10, steps=100, warmup=10, peak=peak) == pytest.approx(peak)
    assert lr_at(55, steps=100, warmup=10, peak=peak) == pytest.approx(0.55 * peak)
    assert lr_at(100, steps=100, warmup=10, peak=peak) == pytest.approx(0.1 * peak)


def test_corpus_never_holds_a_held_out_prompt_and_mixes_both_kinds(tmp_path):
    recipe = make_recipe(tmp_path)
    prepare_data(recipe)
    held_out = held_out_prompts(recipe)
    # 2-3 terms of 1..4 make 80 prompts; 40 are held out, so exclusion really bites.
    assert len(held_out) == 40
    texts = [t for step in range(30) for t in corpus_batch(recipe, step, held_out, lambda p: p + "=? <think>")]
    prompts = {t.split("=?")[0] for t in texts}
    assert len(texts) == 30 * 16 and not prompts & held_out
    worked = [t for t in texts if not t.split("<think>")[1].startswith("</think>")]
    assert 0.35 < len(worked) / len(texts) < 0.65
    for text in texts:
        terms = parse_terms(text.split("=?")[0])
        assert text.endswith(worked_solution(terms)) or text.endswith(hasty_solution(terms))
    assert corpus_batch(recipe, 3, held_out, str) == corpus_batch(recipe, 3, held_out, str)


def test_training_prompts_exclude_the_held_out_set(tmp_path):
    recipe = make_recipe(tmp_path)
    prepare_data(recipe)
    import pyarrow.parquet as pq

    train = {r["prompt"] for r in pq.read_table(recipe.data.train_path).to_pylist()}
    held_out = [r["prompt"] for r in pq.read_table(recipe.data.eval_path).to_pylist()]
    assert len(held_out) == len(set(held_out)) == 40 and not train & set(held_out)


def test_pretraining_lowers_the_loss_writes_a_model_and_is_cached(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = make_recipe(tmp_path, 40)
    prepare_data(recipe)
    path = prepare_model(recipe)
    assert path == tmp_path / "base" and (tmp_path / "base.init" / "config.json").is_file()
    record = json.loads((path / RECORD).read_text())
    assert record["settings"]["pretrain"]["steps"] == 40 and record["final_loss"] < 2.0  # ln(vocab) ~ 5.8
    AutoModelForCausalLM.from_pretrained(path)
    assert AutoTokenizer.from_pretrained(path)("4+7")["input_ids"]
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert prepare_model(recipe) == path and (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert "reusing the pre-trained base model" in capsys.readouterr().out
    # RL under another template from the same base: what counts is the template of the corpus
    at_once = make_recipe(tmp_path, 40, "--data.template", "{prompt}=? <think></think><answer>",
                          "--model.pretrain.template", "{prompt}=? <think>")
    assert prepare_model(at_once) == path and (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert "reusing the pre-trained base model" in capsys.readouterr().out
    assert prepare_model(recipe, pretrain=False) == tmp_path / "base.init"
    # Changed settings rebuild it.
    changed = make_recipe(tmp_path, 2)
    prepare_model(changed)
    assert json.loads((path / RECORD).read_text())["settings"]["pretrain"]["steps"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".base")]  # no staging left over


def test_a_directory_aha_did_not_write_is_never_replaced(tmp_path):
    from cluster.recipe import RecipeError

    recipe = make_recipe(tmp_path)
    prepare_data(recipe)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "my-weights.bin").write_bytes(b"precious")
    with pytest.raises(RecipeError, match=r"^model.path: .*base' exists and was not written by aha"):
        prepare_model(recipe)
    assert (tmp_path / "base" / "my-weights.bin").read_bytes() == b"precious"
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["my-weights.bin"]
