"""Every mistake before anything starts (cluster/startup/preflight.py): hostile recipes, data files and
model directories through the real `aha` command, one case per class. Each must end in exactly
one line `aha: error: ...` naming the key, file or row, exit code 2, no traceback, and leave
the user's files as they were. Nothing here starts Ray or an engine, so it is all fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.inputs.data import DataError, load_prompt_rows
from cluster.inputs.prompts import encode_prompts, load_rows
from cluster.inputs.tiny_recipe import write_tiny_recipe
from cluster.startup.preflight import check_kv_memory, check_prepared, memory_bytes
from cluster.recipe import RecipeError, load_recipe
from rewards.registry import REGISTRY, required_fields

AHA = str(Path(sys.executable).with_name("aha"))
SHIPPED = str(Path(__file__).resolve().parents[1] / "deploy" / "recipes" / "arith-zero-cpu.toml")
ROWS = [{"prompt": f"{a}+{b}", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6)]]
USER_REWARDS = """
def needs_hint(completion, hint, **fields):
    return 1.0
"""


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def bad_utf8_parquet(path: Path) -> Path:
    """A Parquet string column holding Latin-1 bytes, as a careless tool writes it."""
    prompts = pa.array([b"1+2", b"caf\xe9 au lait"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"prompt": prompts, "answer": ["3", "4"]}), path)
    return path


def model_copy(source: Path, target: Path, change=None) -> Path:
    shutil.copytree(source, target)
    if change:
        change(target)
    return target


def truncate_weights(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def remove_tokenizer(model: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (model / name).unlink()


def special_tags(model: Path) -> None:
    """The R1 tags as special tokens: decoding with skip_special_tokens drops them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>", "<answer>", "</answer>"]})
    tokenizer.save_pretrained(model)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir) -> Path:
    """A user's files: a model directory (not built by the recipe), data files good and bad,
    broken model directories, a package of reward functions."""
    home = tmp_path_factory.mktemp("user")
    model_copy(tiny_model_dir, home / "model")
    write_parquet(home / "train.parquet", ROWS)
    write_parquet(home / "eval.parquet", ROWS)
    write_parquet(home / "solution.parquet", [{"prompt": r["prompt"], "solution": r["answer"]} for r in ROWS])
    write_parquet(home / "null-answer.parquet", [*ROWS, {"prompt": "7+7", "answer": None}])
    write_parquet(home / "long.parquet", [*ROWS, {"prompt": "9+" * 300 + "9", "answer": "2709"}])
    bad_utf8_parquet(home / "latin1.parquet")
    (home / "latin1.jsonl").write_bytes(b'{"prompt": "1+2", "answer": "3"}\n{"prompt": "caf\xe9", "answer": "4"}\n')
    # Over pyarrow's 1 MiB block, so its own row number (counted within a block) is wrong.
    lines = [json.dumps({"prompt": f"{i}+{i} " + "pad " * 20, "answer": str(2 * i)}) for i in range(30000)]
    lines[25000] = '{"prompt": "1+1" "answer": "2"}'
    (home / "deep.jsonl").write_text("\n".join(lines) + "\n")
    (home / "empty-dir").mkdir()
    (home / "a-file").write_text("not a model\n")
    model_copy(tiny_model_dir, home / "bad-config", lambda m: (m / "config.json").write_text("{oops"))
    model_copy(tiny_model_dir, home / "truncated", truncate_weights)
    model_copy(tiny_model_dir, home / "no-tokenizer", remove_tokenizer)
    model_copy(tiny_model_dir, home / "special-tags", special_tags)
    model_copy(tiny_model_dir, home / "no-chat-template", lambda m: (m / "chat_template.jinja").unlink())
    model_copy(tiny_model_dir, home / "no-model-type", lambda m: (m / "config.json").write_text('{"vocab_size": 8}'))
    (home / "userrew").mkdir()
    (home / "userrew" / "__init__.py").write_text("")
    (home / "userrew" / "good.py").write_text(USER_REWARDS)
    (home / "userrew" / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    (home / "userrew" / "exits.py").write_text("import sys\nsys.exit(3)\n")
    return home


# The tiny recipe on the user's own model and data (no tiny model, no synthetic data).
USER_RECIPE = {
    "model.tiny": None, "data.synthetic": None,
    "data.train_path": "{root}/train.parquet", "data.eval_path": "{root}/eval.parquet",
    "rollout": {"max_model_len": 512, "max_new_tokens": 32, "kv_cache_gb": 0.1},
    "reward": {"weights": {"arithmetic": 1.0, "format": 0.1}},
    "algorithm": None, "learner": None, "eval": None,
    "cluster": {"device": "cpu", "num_cpus": 16},
    "run": {"steps": 5},
}


def write_user_recipe(path: Path, home: Path, extra: dict | None = None) -> Path:
    """USER_RECIPE on the files in `home`, with the tiny-recipe overrides `extra` on top."""
    return write_tiny_recipe(path, {**USER_RECIPE, **(extra or {})}, root=home)


# (id, recipe overrides, command-line overrides, environment changes, what the one line must name)
H = "{home}"
CASES = [
    ("unknown-reward", {}, ["--reward.weights", "{nosuch = 1.0}"], {}, "reward.weights.nosuch: not a built-in"),
    ("reward-import-fails", {}, ["--reward.weights", '{"userrew.broken:f" = 1.0}'], {},
     "reward.weights.userrew.broken:f: cannot import module 'userrew.broken': RuntimeError: boom"),
    ("reward-module-exits", {}, ["--reward.weights", '{"userrew.exits:f" = 1.0}'], {},
     "reward.weights.userrew.exits:f: cannot import module 'userrew.exits': SystemExit: 3"),
    ("reward-module-missing", {}, ["--reward.weights", '{"nopkg.mod:f" = 1.0}'], {}, "reward.weights.nopkg.mod:f"),
    ("data-lacks-reward-field", {}, ["--data.train_path", f"{H}/solution.parquet"], {},
     "solution.parquet': reward 'arithmetic' needs the row field 'answer'"),
    ("user-reward-field", {}, ["--reward.weights", '{"userrew.good:needs_hint" = 1.0}'], {},
     "train.parquet': reward 'userrew.good:needs_hint' needs the row field 'hint'"),
    ("reward-field-null", {}, ["--data.eval_path", f"{H}/null-answer.parquet"], {},
     "null-answer.parquet': row 3 has no value for field 'answer'"),
    ("not-utf8-jsonl", {}, ["--data.train_path", f"{H}/latin1.jsonl"], {}, "latin1.jsonl': line 2 is not valid UTF-8"),
    ("not-utf8-parquet", {}, ["--data.eval_path", f"{H}/latin1.parquet"], {},
     "latin1.parquet': column 'prompt' row 1 is not valid UTF-8"),
    ("jsonl-error-deep-in-file", {}, ["--data.train_path", f"{H}/deep.jsonl"], {},
     "deep.jsonl': cannot read it as jsonl: line 25001 is not valid JSON"),
    ("data-path-with-a-newline", {}, ["--data.eval_path", "no\nsuch.parquet"], {},
     "data file 'no such.parquet': no such file"),
    ("eval-file-missing", {}, ["--data.eval_path", f"{H}/nothere.parquet"], {}, "nothere.parquet': no such file"),
    ("train-prompt-too-long", {}, ["--data.train_path", f"{H}/long.parquet"], {},
     "long.parquet': row 3 is"),
    ("eval-prompt-too-long", {}, ["--data.eval_path", f"{H}/long.parquet"], {}, "long.parquet': row 3 is"),
    ("model-missing", {}, ["--model.path", f"{H}/nothere"], {}, "model.path: '{home}/nothere' does not exist"),
    ("model-empty-dir", {}, ["--model.path", f"{H}/empty-dir"], {}, "model.path: '{home}/empty-dir' is an empty"),
    ("model-is-a-file", {}, ["--model.path", f"{H}/a-file"], {}, "model.path: '{home}/a-file' is a file"),
    ("model-bad-config", {}, ["--model.path", f"{H}/bad-config"], {}, "bad-config/config.json' is not valid JSON"),
    ("model-config-not-a-model", {}, ["--model.path", f"{H}/no-model-type"], {}, "names no model_type"),
    ("model-truncated-weights", {}, ["--model.path", f"{H}/truncated"], {},
     "truncated/model.safetensors' is truncated"),
    ("model-no-tokenizer", {}, ["--model.path", f"{H}/no-tokenizer"], {}, "no-tokenizer' has no vocabulary"),
    ("tokenizer-not-loading", {}, ["--model.tokenizer", f"{H}/empty-dir"], {}, "model.tokenizer: no tokenizer loads"),
    ("hub-id-offline", {}, ["--model.path", "no-such-org/no-such-model"], {"HF_HUB_OFFLINE": "1"},
     "model.path: 'no-such-org/no-such-model' is not a local directory and not in the Hugging Face cache"),
    # Online the hub answers "no such model"; without a network the lookup fails at once. Either way: one line.
    ("hub-id-unknown", {}, ["--model.path", "no-such-org/no-such-model"], {"HF_HUB_OFFLINE": None},
     "model.path: 'no-such-org/no-such-model' is not a local directory"),
    ("not-a-hub-id", {}, ["--model.path", "a/b/c"], {}, "model.path: 'a/b/c' is not a local directory"),
    ("max-model-len-over-the-model", {}, ["--rollout.max_model_len", "4096"], {},
     "rollout.max_model_len: 4096 is longer than the model takes (max_position_embeddings = 2048"),
    ("kv-cache-under-one-sequence", {}, ["--rollout.kv_cache_gb", "0.0001"], {},
     "rollout.kv_cache_gb: 0.0001 GiB holds the KV cache of 104 tokens of this model, less than one sequence"),
    ("chat-template-missing", {}, ["--model.path", f"{H}/no-chat-template", "--data.template", "chat"], {},
     "data.template: 'chat' renders prompts with the tokenizer's chat template"),
    ("kv-cache-over-memory", {}, ["--rollout.kv_cache_gb", "100000"], {}, "rollout.kv_cache_gb: 1 rollout worker"),
    ("memory-fraction-over-memory", {}, ["--rollout.kv_cache_gb", "0", "--rollout.num_workers", "4",
                                         "--rollout.gpu_memory_utilization", "1.0"], {},
     "rollout.gpu_memory_utilization: 4 rollout worker(s) x 1 of"),
    ("forced-answer-without-room", {}, ["--eval.force_answer", "</think><answer>", "--eval.budgets", "0,32",
                                        "--rollout.max_model_len", "432"], {},  # prompt + new tokens, exactly
     "eval.force_answer: a forced request can be"),
    ("tiny-model-eval-too-long", {"model.tiny.seed": 0}, ["--data.eval_path", f"{H}/long.parquet"], {},
     "long.parquet': row 3 is"),
]


def run_aha(*args: str, env_changes: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, value in (env_changes or {}).items():
        env.pop(name, None) if value is None else env.__setitem__(name, value)
    return subprocess.run([AHA, *args], capture_output=True, text=True, timeout=300, env=env)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def results(world, tmp_path_factory):
    """Every case through `aha check` at once (each is a process of a few seconds, mostly start-up)."""
    recipes = tmp_path_factory.mktemp("recipes")
    before = tree_hashes(world)
    env = {"PYTHONPATH": str(world), "HF_HUB_CACHE": str(recipes / "hf-cache")}

    def one(case):
        name, extra, overrides, env_changes, _ = case
        path = recipes / f"{name}.toml"
        write_user_recipe(path, world, extra)
        return run_aha("check", str(path), *[o.replace(H, str(world)) for o in overrides],
                       env_changes={**env, **env_changes})

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip([c[0] for c in CASES], pool.map(one, CASES)))
    done["good"] = one(("good", {}, [], {}, ""))
    done["tags-warning"] = one(("tags-warning", {}, ["--model.path", f"{H}/special-tags"], {}, ""))
    assert tree_hashes(world) == before, "aha changed the user's files"
    assert not (recipes / "hf-cache").exists(), "aha check downloaded or cached something"
    return done


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aha: error: ") and needle in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_check_refuses_in_one_line(results, world, case):
    assert_one_line_error(results[case[0]], case[4].replace(H, str(world)))


def test_a_good_recipe_passes_without_a_word(results):
    assert results["good"].returncode == 0 and results["good"].stderr == ""
    assert json.loads(results["good"].stdout)["reward"]["weights"] == {"arithmetic": 1.0, "format": 0.1}


def test_tags_the_tokenizer_drops_are_a_warning(results):
    proc = results["tags-warning"]
    assert proc.returncode == 0 and json.loads(proc.stdout)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aha: warning: data.template, reward 'format' use the R1 tags")
    assert "<think>" in lines[0]


# ---------------------------------------------------------------- the smaller items


def test_smoke_with_no_prompts(tmp_path):
    assert_one_line_error(run_aha("smoke", SHIPPED, "--prompts", "0"),
                          "--prompts: must be >= 1")


def test_override_key_with_a_newline_is_one_line():
    proc = run_aha("check", SHIPPED, "--rollout.group\nsize", "4")
    assert_one_line_error(proc, "rollout.'group\\nsize': unknown key")


@pytest.mark.parametrize(("option", "value"), [("--num-layers", "0"), ("--hidden-size", "100"),
                                               ("--num-kv-heads", "3"), ("--seed", "-1")])
def test_tiny_model_options_follow_the_recipe_rule(tmp_path, option, value):
    out = tmp_path / "m"
    assert_one_line_error(run_aha("tiny-model", str(out), option, value), f"{option}: ")
    assert not out.exists()
    key = "model.tiny." + option[2:].replace("-", "_")
    with pytest.raises(RecipeError) as err:  # the same rule, where a recipe states it
        load_recipe(None, ["--model.path", "m", "--data.train_path", "t.parquet", f"--{key}", value])
    assert err.value.key == key


def test_jsonl_errors_name_the_line_an_editor_shows(world, tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"prompt": "a", "answer": "1"}\n\n\n{"prompt": null, "answer": "2"}\n')
    with pytest.raises(DataError, match=r"column 'prompt' row 1 \(line 4\) is null"):
        load_prompt_rows(blank)
    kinds = tmp_path / "kinds.jsonl"
    kinds.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": 2}\n')
    with pytest.raises(DataError, match="line 3: column 'answer' holds a number, but line 1 has a string"):
        load_prompt_rows(kinds)


# ---------------------------------------------------------------- the functions, called directly


def test_required_fields_of_the_built_ins():
    assert {name: required_fields(fn) for name, fn in REGISTRY.items()} == {
        "math": ["answer"], "math_strict": ["answer"], "format": [], "format_strict": [],
        "countdown": ["numbers", "target"], "countdown_all": ["numbers", "target"],
        "arithmetic": ["answer"], "code": ["tests"]}

    def user(completion, hint, *, level, option=3, **fields):
        return 0.0

    assert required_fields(user) == ["hint", "level"]


def test_check_prepared_names_the_eval_file(world, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    path = tmp_path / "r.toml"
    write_user_recipe(path, world)
    recipe = load_recipe(path, ["--data.eval_path", str(world / "long.parquet")])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    too_long = r"long\.parquet': row 3 is \d+ tokens after the template, over data.max_prompt_tokens=400"
    with pytest.raises(DataError, match=too_long):
        check_prepared(recipe, str(world / "model"), tokenizer)
    # encode_prompts, as the loop and the evaluation call it, names the row's own file too.
    with pytest.raises(DataError, match="long.parquet"):
        encode_prompts(recipe, tokenizer, load_rows(recipe, str(world / "long.parquet")))
    assert check_prepared(load_recipe(path, ["--data.eval_path", str(world / "eval.parquet")]),
                          str(world / "model"), tokenizer) == []


def test_kv_memory_fits_what_this_machine_has(world, tmp_path):
    total, available = memory_bytes()
    assert 0 < available <= total
    path = tmp_path / "r.toml"
    write_user_recipe(path, world)
    fits = f"{0.5 * available / 2**30:.3f}"
    check_kv_memory(load_recipe(path, ["--rollout.kv_cache_gb", fits]))
    check_kv_memory(load_recipe(path, ["--rollout.kv_cache_gb", "100000", "--cluster.address", "auto"]))  # remote
    with pytest.raises(RecipeError, match="rollout.kv_cache_gb"):
        check_kv_memory(load_recipe(path, ["--rollout.kv_cache_gb", fits, "--rollout.num_workers", "3"]))
