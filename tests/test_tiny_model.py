"""The locally built tiny model and character tokenizer load and work in transformers."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster.inputs.tiny_model import PRETRAIN_RECORD, R1_TAGS, build_tiny_model, ensure_tiny_model
from spec_helpers import tiny_spec


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_text_round_trips_one_token_per_ascii_character(tokenizer):
    text = "What is 12 + 30?\n\tx = {a: [1, 2]} 'q' \"z\" ~`|\\"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_non_ascii_text_round_trips(tokenizer):
    text = "π ≈ 3.14, naïve — 数学"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_r1_tags_are_single_tokens_kept_when_skipping_special_tokens(tokenizer):
    text = "<think>2+2 is 4</think> <answer>4</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tag_ids = [tokenizer.convert_tokens_to_ids(tag) for tag in R1_TAGS]
    assert len(set(tag_ids)) == 4 and tokenizer.unk_token_id not in tag_ids
    assert [i for i in ids if i in tag_ids] == [tag_ids[0], tag_ids[1], tag_ids[2], tag_ids[3]]
    assert len(ids) == len(text) - sum(len(tag) - 1 for tag in R1_TAGS)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_renders_turns_and_generation_prompt(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"


def test_model_shape_follows_the_spec(tiny_model_dir, model, tokenizer):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["head_dim"]) == (128, 2, 64)
    assert config["vocab_size"] >= len(tokenizer) and config["vocab_size"] % 64 == 0
    assert model.config.eos_token_id == tokenizer.eos_token_id


def test_transformers_generates_from_the_tiny_model(model, tokenizer):
    prompt = tokenizer("User: 3+4?\nAssistant: <think>", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    new = out[0, prompt["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 12
    assert int(new.max()) < model.config.vocab_size


def test_same_seed_builds_identical_weights_and_another_seed_differs(tmp_path):
    spec = tiny_spec(hidden_size=64, num_layers=1, seed=7)
    a = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "a", spec))
    b = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "b", spec))
    c = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "c", tiny_spec(hidden_size=64, num_layers=1, seed=8)))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_ensure_reuses_a_matching_model_and_rebuilds_a_changed_one(tmp_path):
    spec = tiny_spec(hidden_size=64, num_layers=1)
    path = ensure_tiny_model(tmp_path / "m", spec)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path / "m", spec) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    ensure_tiny_model(tmp_path / "m", tiny_spec(hidden_size=128, num_layers=1))
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 128
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging directory left behind


@pytest.mark.parametrize("bad", [dict(hidden_size=100), dict(hidden_size=0), dict(hidden_size=192, num_kv_heads=2)])
def test_bad_shapes_are_refused_and_leave_nothing(tmp_path, bad):
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path / "bad", tiny_spec(**bad))
    assert list(tmp_path.iterdir()) == []


def _aha_tiny_model(*args):
    import subprocess
    import sys

    return subprocess.run([str(Path(sys.executable).with_name("aha")), "tiny-model", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_the_cli_refuses_to_replace_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):  # not even when asked: aha replaces only what it wrote
        done = _aha_tiny_model(tmp_path / "mine", *extra)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert "was not written by aha; refusing to replace it" in done.stderr


def test_a_model_aha_wrote_is_replaced_only_with_overwrite_and_never_by_a_recipes_random_one(tmp_path):
    model = build_tiny_model(tmp_path / "m", tiny_spec(hidden_size=64, num_layers=1))
    (model / PRETRAIN_RECORD).write_text("{}")  # as if pre-trained: the valuable kind
    weights = (model / "model.safetensors").read_bytes()
    done = _aha_tiny_model(model)
    assert done.returncode == 2 and "pass --overwrite" in done.stderr and done.stderr.count("\n") == 1
    with pytest.raises(FileExistsError, match="pre-trained"):  # what a [model.tiny] recipe would do
        ensure_tiny_model(model, tiny_spec(hidden_size=128, num_layers=1))
    assert (model / "model.safetensors").read_bytes() == weights
    assert _aha_tiny_model(model, "--overwrite").returncode == 0
    assert not (model / PRETRAIN_RECORD).exists()
