"""A model directory's files, checked before any engine loads them: config.json, the weights,
and the longest sequence the model takes.

transformers and vLLM report a broken directory late (after Ray and the engines start, some
50 s in) and as a traceback; these checks read only the small parts of each file (config.json,
each safetensors header) and fail in one line naming the file. Standard library only.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from cluster.recipe.checks import RecipeError

SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit on its JSON header
# The keys vLLM 0.32 reads a model's longest sequence from, smallest wins
# (vllm/transformers_utils/model_arch_config_convertor.py, derive_max_model_len_and_key).
MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
# RoPE scalings whose max_position_embeddings is already scaled: vLLM does not multiply these
# by their factor (vllm/config/model.py, _get_and_verify_max_len).
PRESCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


def read_config(directory: Path, key: str) -> dict:
    """config.json of a model directory as a dict; RecipeError naming `key` if absent or broken."""
    if not directory.is_dir():
        raise RecipeError(key, f"'{directory}' is a file, not a model directory")
    if not any(directory.iterdir()):
        raise RecipeError(key, f"'{directory}' is an empty directory, not a model")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise RecipeError(key, f"'{directory}' has no config.json: not a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except OSError as err:
        raise RecipeError(key, f"'{config_file}' cannot be read: {err.strerror}") from None
    except (ValueError, RecursionError) as err:
        raise RecipeError(key, f"'{config_file}' is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise RecipeError(key, f"'{config_file}' holds a JSON {type(config).__name__}, not an object")
    if "model_type" not in config and "architectures" not in config:  # what transformers and vLLM go by
        raise RecipeError(key, f"'{config_file}' names no model_type or architectures: not a model's config")
    return config


def check_weights(directory: Path, key: str) -> list[Path]:
    """Every weight file the directory names is there and whole; returns them.

    Safetensors files are checked to their last byte through their header (a truncated copy
    is caught without reading the tensors); a torch .bin file is a zip whose central
    directory, at the end of the file, must be readable.
    """
    files = _weight_files(directory, key)
    if not files:
        raise RecipeError(key, f"'{directory}' has no weights (model.safetensors, {SAFETENSORS_INDEX} or "
                          "pytorch_model.bin)")
    for file in files:
        if not file.is_file():
            raise RecipeError(key, f"weight file '{file}' named by the index is missing")
        if file.suffix == ".safetensors":
            _check_safetensors(file, key)
        elif not _is_whole_zip(file):
            raise RecipeError(key, f"weight file '{file}' is truncated or not a torch checkpoint")
    return files


def _weight_files(directory: Path, key: str) -> list[Path]:
    for index_name in (SAFETENSORS_INDEX, TORCH_INDEX):
        index = directory / index_name
        if index.is_file():
            try:
                shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
                return [directory / name for name in sorted(set(shards))]
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise RecipeError(key, f"'{index}' is not a readable weight index ({type(err).__name__})") from None
    return sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))


def _check_safetensors(file: Path, key: str) -> None:
    """Header: 8 bytes of little-endian length, then that much JSON naming each tensor's byte range."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            whole = size >= 8 and length <= min(size - 8, MAX_HEADER_BYTES)
            raw = handle.read(length) if whole else b""
    except OSError as err:
        raise RecipeError(key, f"weight file '{file}' cannot be read: {err.strerror}") from None
    if not whole:
        raise RecipeError(key, f"weight file '{file}' is truncated or not safetensors ({size} bytes)")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise RecipeError(key, f"weight file '{file}' has a corrupt safetensors header")
    try:
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (KeyError, IndexError, TypeError):
        ends = [None]
    if not all(isinstance(end, int) for end in ends):
        raise RecipeError(key, f"weight file '{file}' has a corrupt safetensors header")
    end = max(ends, default=0)
    if 8 + length + end > size:
        raise RecipeError(key, f"weight file '{file}' is truncated: its header places tensors up to byte "
                          f"{8 + length + end}, the file has {size}")


def _is_whole_zip(file: Path) -> bool:
    try:
        with zipfile.ZipFile(file) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def model_max_len(config: dict) -> tuple[int, str] | None:
    """The longest sequence vLLM lets this model take, and the config key it comes from; None
    when the config names none (vLLM then takes rollout.max_model_len as given)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    found = [(text[k], k) for k in MAX_LEN_KEYS if isinstance(text.get(k), (int, float))
             and not isinstance(text.get(k), bool)]
    if not found:
        return None
    length, key = min(found)
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in PRESCALED_ROPE:
        factor = rope.get("factor")
        length *= factor if isinstance(factor, (int, float)) and factor > 0 else 1
    return int(length), key


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int | None:
    """KV-cache bytes one token takes in a plain full-attention model (keys and values, every
    layer); None where that estimate does not hold (sliding windows, MLA, missing keys), so a
    check built on it never refuses a model it cannot size."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if text.get("sliding_window") or text.get("kv_lora_rank") or any(
            kind != "full_attention" for kind in text.get("layer_types") or []):
        return None
    layers, heads, hidden = (text.get(k) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or (hidden // heads if isinstance(hidden, int) and isinstance(heads, int)
                                        and heads > 0 else None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, kv_heads, head_dim)):
        return None
    return 2 * layers * kv_heads * head_dim * dtype_bytes
