"""[data.synthetic] cold-start traces: worked solutions of the first training prompts, as SFT reads
them; never a held-out problem; reused when unchanged; a user's file at the path is never replaced."""

import pytest

from cluster.inputs.pretrain import parse_terms
from cluster.inputs.prepare import prepare_data
from cluster.inputs.prompts import load_rows
from cluster.inputs.traces import load_traces
from cluster.recipe import RecipeError, load_recipe


def _recipe(tmp_path, *extra):
    return load_recipe(None, ["--model.path", "m", "--cluster.num_cpus", "4",
                              "--data.train_path", str(tmp_path / "train.parquet"),
                              "--data.eval_path", str(tmp_path / "eval.parquet"),
                              "--data.synthetic.task", "chain_sum", "--data.synthetic.train_rows", "200",
                              "--data.synthetic.eval_rows", "50", "--data.synthetic.cold_start_traces", "20",
                              "--data.synthetic.cold_start_path", str(tmp_path / "cold.parquet"), *extra])


def test_cold_start_traces_are_worked_solutions_of_training_prompts(tmp_path):
    recipe = _recipe(tmp_path)
    prepare_data(recipe)
    traces = load_traces(tmp_path / "cold.parquet", recipe.sft, recipe.data.template)
    train = load_rows(recipe, recipe.data.train_path)
    held_out = {row.prompt for row in load_rows(recipe, recipe.data.eval_path)}
    assert [t.prompt for t in traces] == [row.prompt for row in train[:20]]
    assert not held_out & {t.prompt for t in traces}
    for trace in traces:
        terms = parse_terms(trace.prompt)
        assert trace.completion.endswith(f"</think><answer>{sum(terms)}</answer>")
        assert trace.completion.count("=") == len(terms) - 1  # one step per partial sum
    written = (tmp_path / "cold.parquet").stat().st_mtime_ns
    prepare_data(recipe)  # same settings: reused
    assert (tmp_path / "cold.parquet").stat().st_mtime_ns == written


def test_direct_traces_are_the_right_answers_alone_and_replace_worked_ones(tmp_path):
    prepare_data(_recipe(tmp_path))
    direct = _recipe(tmp_path, "--data.synthetic.cold_start_style", "direct")
    prepare_data(direct)  # another style: the file aha wrote is rewritten
    traces = load_traces(tmp_path / "cold.parquet", direct.sft, direct.data.template)
    assert len(traces) == 20
    for trace in traces:
        assert trace.completion == f"</think><answer>{sum(parse_terms(trace.prompt))}</answer>"


def test_a_users_file_at_the_cold_start_path_is_never_replaced(tmp_path):
    (tmp_path / "cold.parquet").write_text("mine")
    with pytest.raises(RecipeError, match="data.synthetic.cold_start_path: .* was not written by aha"):
        prepare_data(_recipe(tmp_path))
    assert (tmp_path / "cold.parquet").read_text() == "mine"


@pytest.mark.parametrize("extra, key", [
    (("--data.synthetic.task", "arithmetic"), "data.synthetic.cold_start_traces"),
    (("--data.synthetic.cold_start_path", ""), "data.synthetic.cold_start_path"),
    (("--data.synthetic.cold_start_traces", "201"), "data.synthetic.cold_start_traces"),
])
def test_impossible_cold_start_settings_name_the_key(tmp_path, extra, key):
    with pytest.raises(RecipeError, match=f"^{key}:"):
        _recipe(tmp_path, *extra)
