"""Checks before a run starts: what the recipe points at — reward functions, data files, the
model, this machine's memory — so that a mistake is one line before Ray, an engine or a
minute of GPU time is spent, not a traceback half a minute in.

Two stages, both raising `RecipeError` or `DataError` (one line naming the key, file or row)
and returning warning lines:

- `check_before_start(recipe)`: before any input is prepared and before Ray starts;
- `check_prepared(recipe, model_path, tokenizer)`: once the data files and the model exist
  (synthetic data and tiny models are built by `cluster/inputs/prepare.py` in between).

`aha check` runs the first, and the second when the inputs already exist (`check_existing`).
`require_prompt_file` comes before both in a command that samples prompts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cluster.inputs.data import DataError, PromptRow, one_line, read_table, row_label
from cluster.inputs.model_files import check_weights, kv_bytes_per_token, model_max_len, read_config
from cluster.inputs.prompts import encode_prompts, load_rows
from cluster.recipe import Recipe, RecipeError
from cluster.recipe.checks import key_text
from cluster.recipe.learning_signal import check_learning_signal, synthetic_train_rows

R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
TAG_REWARDS = ("format", "format_strict")  # built-in rewards that score the R1 tags themselves
ENCODE_CHUNK = 1024  # prompts tokenized at once by check_prepared: bounded memory on big datasets
HUB_TIMEOUT_S = 10.0


def require_prompt_file(recipe: Recipe, *, trains: bool = True) -> None:
    """`aha train` and `aha generate` sample prompts: data.train_path is theirs to need (an SFT-only
    recipe has none). A run that trains on the groups (`trains`: aha train and aha distill; aha
    generate only samples, greedily if it likes) must be able to learn from them, with the
    prompts the training set holds: RecipeError naming the key (nothing is written yet)."""
    if not recipe.data.train_path:
        raise RecipeError("data.train_path", "is required (a Parquet or JSONL prompt file)")
    if trains:
        check_learning_signal(recipe, *train_rows(recipe))


def train_rows(recipe: Recipe) -> tuple[int | None, str]:
    """How many prompts the training set holds and where that comes from: the synthetic data's
    setting, or the rows of data.train_path; (None, "") while the file is missing or unreadable
    (`check_before_start` says why)."""
    synthetic = synthetic_train_rows(recipe)
    if synthetic is not None:
        return synthetic
    try:
        rows = read_table(Path(recipe.data.train_path), recipe.data.file_format).num_rows
    except DataError:
        return None, ""
    return (rows, f"'{recipe.data.train_path}'") if rows else (None, "")  # no rows: a DataError of its own


def check_before_start(recipe: Recipe) -> list[str]:
    """Everything that can be checked before inputs are prepared or Ray starts; warning lines."""
    rewards = resolve_rewards(recipe)
    if recipe.data.synthetic is None:  # files the user brings; generated ones are checked once made
        for path, rows in _rows_in_use(recipe):
            check_reward_fields(recipe, rewards, rows, path)
    model_dir = None
    if recipe.model.tiny is None:  # a tiny model is built later; check_prepared looks at it
        model_dir = resolve_model(recipe.model.path, "model.path")
        if model_dir is not None:
            check_model_dir(recipe, model_dir, "model.path", weights=_weights_expected(recipe.model.path))
    key = _tokenizer_key(recipe)
    tokenizer_dir = resolve_model(recipe.model.tokenizer, key) if recipe.model.tokenizer else model_dir
    if tokenizer_dir is not None:
        _load_tokenizer_from(recipe, str(tokenizer_dir), key)
    check_kv_memory(recipe)
    return []


def check_prepared(recipe: Recipe, model_path: str, tokenizer) -> list[str]:
    """What needs the data and the model: every prompt fits data.max_prompt_tokens, the data
    provides the rewards' fields, the model takes rollout.max_model_len; warning lines."""
    rewards = resolve_rewards(recipe)
    if recipe.data.template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise RecipeError("data.template", f"'chat' renders prompts with the tokenizer's chat template, and the "
                          f"tokenizer of '{recipe.model.tokenizer or model_path}' has none: use 'r1_zero', 'raw' "
                          "or a template string with {prompt}")
    for path, rows in _rows_in_use(recipe):
        check_reward_fields(recipe, rewards, rows, path)
        for start in range(0, len(rows), ENCODE_CHUNK):
            encode_prompts(recipe, tokenizer, rows[start:start + ENCODE_CHUNK])  # DataError names file and row
    _check_forcing_fits(recipe, tokenizer)
    directory = _local_model_dir(model_path)
    if directory is not None:
        check_model_dir(recipe, directory, "model.path", weights=_weights_expected(model_path))
    warning = tag_warning(recipe, tokenizer)
    return [warning] if warning else []


def _check_forcing_fits(recipe: Recipe, tokenizer) -> None:
    """Budget forcing asks the model to answer after the prompt, B thinking tokens and the
    forcing text: the longest such request must leave room for an answer in max_model_len."""
    evaluation, rollout = recipe.eval, recipe.rollout
    if not (evaluation.force_answer and evaluation.budgets):
        return
    forcing = len(tokenizer(evaluation.force_answer, add_special_tokens=False)["input_ids"])
    longest = recipe.data.max_prompt_tokens + min(max(evaluation.budgets), rollout.max_new_tokens) + forcing
    if longest >= rollout.max_model_len:
        raise RecipeError("eval.force_answer", f"a forced request can be {longest} tokens (data.max_prompt_tokens + "
                          f"the largest eval.budgets + {forcing} of forcing text), leaving no room for the answer in "
                          f"rollout.max_model_len={rollout.max_model_len}: raise it or lower the budgets")


def check_existing(recipe: Recipe) -> list[str]:
    """`check_prepared` for `aha check`, run only when the model and data are already there as
    `train` would use them (nothing is built or written here); warning lines."""
    model_path = _existing_model(recipe)
    data = [p for p in (recipe.data.train_path, recipe.data.eval_path) if p]
    if model_path is None or not all(Path(path).is_file() for path in data):
        return []
    tokenizer_dir = _local_model_dir(recipe.model.tokenizer or model_path)
    if tokenizer_dir is None:
        return []
    tokenizer = _load_tokenizer_from(recipe, str(tokenizer_dir), _tokenizer_key(recipe))
    return check_prepared(recipe, model_path, tokenizer)


def print_warnings(warnings: list[str]) -> None:
    """Warning lines on stderr, in the CLI's format."""
    for warning in warnings:
        print(f"aha: warning: {warning}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Rewards and the fields they read


def resolve_rewards(recipe: Recipe) -> dict:
    """reward.weights' functions, imported here as the scorer will import them (a user module
    that does not import fails now, not in the scorer actor after start-up)."""
    from rewards.registry import RewardSpecError, resolve_reward

    resolved, writes_bytecode = {}, sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # a check leaves the user's package as it found it (no __pycache__)
    try:
        for name in recipe.reward.weights:
            resolved[name] = resolve_reward(name)
    except RewardSpecError as err:  # its message starts "reward 'name': ", as the key will
        problem = str(err).removeprefix(f"reward {name!r}: ")
        raise RecipeError(f"reward.weights.{key_text(name)}", problem) from None
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return resolved


def check_reward_fields(recipe: Recipe, rewards: dict, rows: list[PromptRow], path: str) -> None:
    """Every field a reward needs is a field of the rows (after data.columns), and not null."""
    from rewards.registry import required_fields

    have = set(rows[0].fields) if rows else set()
    for name, function in rewards.items():
        for field in required_fields(function):
            if field not in have:
                raise DataError(f"data file '{path}': reward '{name}' needs the row field '{field}', which the "
                                f"file lacks (fields: {', '.join(sorted(have)) or 'none'}; data.columns maps a "
                                "column to a field)")
            null = next((row for row in rows if row.fields[field] is None), None)
            if null is not None:
                raise DataError(f"data file '{path}': {row_label(path, null.index, recipe.data.file_format)} has "
                                f"no value for field '{field}', which reward '{name}' needs")


def _rows_in_use(recipe: Recipe) -> list[tuple[str, list[PromptRow]]]:
    """The train rows, and the held-out rows the evaluation reads (its first eval.num_prompts:
    a row it never reads can never fail). Loading them is the check that the files are there,
    readable, valid UTF-8, with the columns the recipe names (DataError otherwise)."""
    found = [(recipe.data.train_path, load_rows(recipe, recipe.data.train_path))] if recipe.data.train_path else []
    if recipe.data.eval_path:
        found.append((recipe.data.eval_path, load_rows(recipe, recipe.data.eval_path)[: recipe.eval.num_prompts]))
    return found


# ---------------------------------------------------------------------------------------
# The model: local directory or hub id, its files, its tokenizer


def resolve_model(name: str, key: str) -> Path | None:
    """The local directory of a model path: the directory itself, or a hub id's snapshot in the
    Hugging Face cache; None for a hub id that is on the hub but not cached (transformers and
    vLLM download it at start). RecipeError when it is neither.

    Without network the answer comes from the cache alone (HF_HUB_OFFLINE=1, or the lookup
    below fails at once). Online, one metadata request, no retries, HUB_TIMEOUT_S at most,
    tells an unknown or gated id from one that exists; nothing is downloaded.
    """
    path = Path(name)  # as the loaders take it: they do not expand "~"
    if path.exists():
        if not path.is_dir():
            raise RecipeError(key, f"'{name}' is a file, not a model directory")
        return path
    if path.is_absolute() or name.startswith("."):
        raise RecipeError(key, f"'{name}' does not exist")
    if name.startswith("~"):
        raise RecipeError(key, f"'{name}' does not exist ('~' is not expanded: write the path out)")
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        raise RecipeError(key, f"'{name}' is not a local directory (no such path) nor a hub id") from None
    if isinstance(cached, str):
        return Path(cached).parent
    where = f"'{name}' is not a local directory and not in the Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise RecipeError(key, f"{where}, and HF_HUB_OFFLINE is set: download it first or point {key} at "
                          "a directory")
    try:
        HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise RecipeError(key, f"{where}; it is gated on the hub: accept its terms there and set "
                          "HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise RecipeError(key, f"{where}, nor a model on the hub (a private one needs HF_TOKEN)") from None
    except Exception as err:  # no network: DNS, refused connection, timeout, proxy
        raise RecipeError(key, f"{where}, and the hub cannot be reached ({type(err).__name__}: "
                          f"{one_line(err)[:200]})") from None
    return None


def _local_model_dir(model_path: str) -> Path | None:
    """A model path's directory on this machine, without asking the hub."""
    path = Path(model_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_path, "config.json")
    except Exception:  # not a valid hub id either: the loaders will say so
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _weights_expected(name: str) -> bool:
    """A local directory must hold its weights; a hub snapshot in the cache may hold only what
    the tokenizer needed, the engines fetch the rest at start, unless the hub is off."""
    from huggingface_hub import constants

    return Path(name).is_dir() or bool(constants.HF_HUB_OFFLINE)


def check_model(recipe: Recipe, name: str, key: str) -> Path | None:
    """A model path as the engines will load it (`aha eval`'s --model): it exists here or on the
    hub, and a local copy passes `check_model_dir`. Returns its directory (None: not cached)."""
    directory = resolve_model(name, key)
    if directory is not None:
        check_model_dir(recipe, directory, key, weights=_weights_expected(name))
    return directory


def check_model_dir(recipe: Recipe, directory: Path, key: str, *, weights: bool) -> None:
    """config.json parses, the weights are whole, rollout.max_model_len fits the model and its
    KV cache."""
    config = read_config(directory, key)
    if weights:
        check_weights(directory, key)
    check_kv_per_sequence(recipe, config)
    found = model_max_len(config)
    if found is not None and recipe.rollout.max_model_len > found[0]:
        if os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0") not in ("", "0"):
            return  # vLLM is told to allow it (and warns); so do we
        raise RecipeError("rollout.max_model_len", f"{recipe.rollout.max_model_len} is longer than the model "
                          f"takes ({found[1]} = {found[0]} in '{directory / 'config.json'}')")


def check_kv_per_sequence(recipe: Recipe, config: dict) -> None:
    """vLLM refuses to start when its KV cache cannot hold one sequence of max_model_len
    (vllm/v1/core/kv_cache_utils.py, _check_enough_kv_cache_memory): check a set
    rollout.kv_cache_gb against the model's size per token, in the engines' dtype."""
    rollout, dtype = recipe.rollout, recipe.model.dtype
    if rollout.kv_cache_gb <= 0:
        return  # sized from the GPU's or the machine's memory at start: vLLM's to check
    on_cpu = _engines_on_cpu(recipe.cluster.device) if dtype == "auto" else None
    per_token = kv_bytes_per_token(config, 4 if dtype == "float32" or on_cpu else 2)  # "auto": fp32 on CPU
    if per_token is None:
        return
    holds = int(rollout.kv_cache_gb * 2**30 // per_token)
    if holds < rollout.max_model_len:
        raise RecipeError("rollout.kv_cache_gb", f"{rollout.kv_cache_gb:g} GiB holds the KV cache of {holds} "
                          f"tokens of this model, less than one sequence of rollout.max_model_len = "
                          f"{rollout.max_model_len}")


def load_tokenizer(recipe: Recipe, model_path: str):
    """The run's tokenizer: model.tokenizer, else the model's own (a hub id is downloaded, as the
    engines download it); RecipeError naming the key when it does not load."""
    return _load_tokenizer_from(recipe, recipe.model.tokenizer or str(model_path), _tokenizer_key(recipe))


def _tokenizer_key(recipe: Recipe) -> str:
    return "model.tokenizer" if recipe.model.tokenizer else "model.path"


def _load_tokenizer_from(recipe: Recipe, source: str, key: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=recipe.model.trust_remote_code)
        ids = tokenizer("The answer is 42.", add_special_tokens=False)["input_ids"]
    except Exception as err:  # transformers raises many kinds for a missing or broken tokenizer
        raise RecipeError(key, f"no tokenizer loads from '{source}' ({type(err).__name__}: "
                          f"{one_line(err)[:200]})") from None
    # transformers 5 builds an empty tokenizer from a directory with no tokenizer files at all.
    if not ids:
        raise RecipeError(key, f"the tokenizer in '{source}' has no vocabulary (no tokenizer files there?)")
    return tokenizer


def tag_warning(recipe: Recipe, tokenizer) -> str | None:
    """A warning when the template, a reward or a stop string relies on the R1 tags and this
    tokenizer does not give them back. Checked: a completion in the R1 format, encoded and then
    decoded with skip_special_tokens=True (as vLLM decodes the text rewards read), must still
    hold every tag. It fails when a tag has characters the vocabulary lacks (unknown tokens)
    or is a special token, which that decoding drops."""
    template, reasons = recipe.data.template, []
    if template == "r1_zero" or any(tag in template for tag in R1_TAGS):
        reasons.append("data.template")
    reasons += [f"reward '{name}'" for name in recipe.reward.weights if name in TAG_REWARDS]
    if any(tag in stop for stop in recipe.rollout.stop for tag in R1_TAGS):
        reasons.append("rollout.stop")
    if not reasons:
        return None
    sample = "<think>2 + 2 = 4</think> <answer>4</answer>"
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    lost = [tag for tag in R1_TAGS if tag not in text]
    if not lost:
        return None
    return (f"{', '.join(reasons)} use the R1 tags, but the tokenizer does not give back {', '.join(lost)} "
            f"(decoded {text!r:.80}): rewards will not see them in completions")


def _existing_model(recipe: Recipe) -> str | None:
    """The model `train` would use, when it is already there: a tiny model only when built for
    these very settings (else train rebuilds it), any other only as a local or cached directory."""
    if recipe.model.tiny is None:
        return recipe.model.path if _local_model_dir(recipe.model.path) is not None else None
    from cluster.inputs.tiny_model import SPEC_MARKER, tiny_model_spec

    marker = Path(recipe.model.path) / SPEC_MARKER
    spec = tiny_model_spec(recipe.model.tiny, recipe.rollout.max_model_len)
    try:
        built = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return recipe.model.path if built == spec.__dict__ else None


# ---------------------------------------------------------------------------------------
# This machine's memory, for engines that keep their KV cache in it


def check_kv_memory(recipe: Recipe) -> None:
    """On CPU vLLM reserves its KV cache in main memory and refuses to start when that much is
    not available (vllm/v1/worker/cpu_worker.py): check it for every local rollout worker."""
    rollout, cluster = recipe.rollout, recipe.cluster
    if cluster.address or not _engines_on_cpu(cluster.device):
        return  # a remote cluster's machines are not this one; a GPU's memory is vLLM's to check
    total, available = memory_bytes()
    if available is None:
        return
    workers, gib = rollout.num_workers, 2**30
    if rollout.kv_cache_gb > 0:
        key, need = "rollout.kv_cache_gb", workers * rollout.kv_cache_gb * gib
        what = f"{workers} rollout worker(s) x {rollout.kv_cache_gb:g} GiB of KV cache"
    else:
        key, need = "rollout.gpu_memory_utilization", workers * rollout.gpu_memory_utilization * total
        what = (f"{workers} rollout worker(s) x {rollout.gpu_memory_utilization:g} of {total / gib:.1f} GiB "
                "(on CPU this fraction of main memory is reserved; set rollout.kv_cache_gb instead)")
    if need > available:
        raise RecipeError(key, f"{what} = {need / gib:.2f} GiB, but this machine has {available / gib:.2f} GiB "
                          "of memory available")


def _engines_on_cpu(device: str) -> bool:
    if device != "auto":
        return device == "cpu"
    import torch  # what the rollout worker asks too

    return not torch.cuda.is_available()


def memory_bytes() -> tuple[int | None, int | None]:
    """(total, available) main memory in bytes, the lower of the machine's and its cgroup's."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total, available = (int(info[name].split()[0]) * 1024 for name in ("MemTotal", "MemAvailable"))
    except (OSError, KeyError, ValueError):
        return None, None
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = int(Path("/sys/fs/cgroup", limit_file).read_text())
            usage = int(Path("/sys/fs/cgroup", usage_file).read_text())
        except (OSError, ValueError):  # absent, or "max": no limit
            continue
        if limit < total:
            total, available = limit, min(available, limit - usage)
    return total, available
