"""Build a tiny, random-initialised Qwen2 causal LM and a character-level tokenizer.

No model can be downloaded on the project's machines, so tests and the CPU demo build their
own. The directory this writes is an ordinary Hugging Face model directory: transformers'
`AutoModelForCausalLM` / `AutoTokenizer` and vLLM load it exactly as they load a hub model,
so the loading code that real users exercise with hub ids stays the same code.

The tokenizer has one token per printable ASCII character, the chat markers of the Qwen
template, and the R1 tags (`<think>`, `</think>`, `<answer>`, `</answer>`) as single tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Head size is fixed: vLLM's CPU attention kernel rejects 16 and 64 is safe.
HEAD_DIM = 64
SPEC_MARKER = "aha_tiny_spec.json"  # in every model directory aha writes
PRETRAIN_RECORD = "aha_pretrain.json"  # in a model directory aha pre-trained (cluster/inputs/pretrain.py)

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|endoftext|>", "<|im_end|>"
IM_START = "<|im_start|>"
R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
SPECIAL_TOKENS = (PAD, UNK, BOS, IM_START, EOS)

# Qwen-style chat template: what `apply_chat_template` renders for the tiny tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# A tiny model's position table covers at least this many tokens, so one model serves
# recipes with different rollout.max_model_len.
MIN_POSITIONS = 2048


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model; `hidden_size` must be a multiple of the head size (64).

    Built from a recipe's `[model.tiny]` by `tiny_model_spec`: no defaults of its own.
    """

    hidden_size: int
    num_layers: int
    num_kv_heads: int
    intermediate_size: int  # 0: four times the hidden size
    max_position_embeddings: int
    seed: int


def tiny_model_spec(tiny, max_model_len: int) -> TinyModelSpec:
    """The spec of a `[model.tiny]` table (`cluster.recipe.schema.TinyModelConfig`, duck-typed)
    for a run whose sequences reach `max_model_len` tokens."""
    return TinyModelSpec(hidden_size=tiny.hidden_size, num_layers=tiny.num_layers, num_kv_heads=tiny.num_kv_heads,
                         intermediate_size=tiny.intermediate_size,
                         max_position_embeddings=max(MIN_POSITIONS, max_model_len), seed=tiny.seed)


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for the bytes 0..255, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_in, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_in[byte] = chr(byte)
        else:
            stand_in[byte] = chr(256 + extra)
            extra += 1
    return [stand_in[b] for b in range(256)]


def character_vocab() -> dict[str, int]:
    """Token -> id: the special tokens first, then one token per byte (so per ASCII character)."""
    return {token: i for i, token in enumerate([*SPECIAL_TOKENS, *_byte_alphabet()])}


def build_tokenizer():
    """A character-level tokenizer in the Qwen2 format: byte-level BPE with no merges.

    transformers maps every `qwen2` model directory to its Qwen2 tokenizer class, which
    rebuilds the pipeline (regex split, byte-level) from the vocabulary; a byte-level vocabulary
    with no merges is therefore the one character tokenizer that loads the same way in
    transformers and in vLLM. Any UTF-8 text round-trips; ASCII is one token per character.
    """
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=character_vocab(),
        merges=[],
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
    )
    # The R1 tags are ordinary (non-special) added tokens: one id each, kept when decoding
    # with skip_special_tokens=True, which is what reward functions read.
    tokenizer.add_tokens(list(R1_TAGS))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _qwen2_config(spec: TinyModelSpec, tokenizer):
    from transformers import Qwen2Config

    if spec.hidden_size <= 0 or spec.hidden_size % HEAD_DIM:
        raise ValueError(f"hidden_size must be a positive multiple of {HEAD_DIM}, got {spec.hidden_size}")
    num_heads = spec.hidden_size // HEAD_DIM
    if spec.num_kv_heads <= 0 or num_heads % spec.num_kv_heads:
        raise ValueError(f"num_kv_heads={spec.num_kv_heads} must divide the {num_heads} attention heads")
    # Round the vocabulary up so embedding matrices have a friendly size.
    vocab_size = -(-len(tokenizer) // 64) * 64
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size or 4 * spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def build_tiny_model(out_dir: str | os.PathLike, spec: TinyModelSpec, *, replace_pretrained: bool = False) -> Path:
    """Write a random-initialised Qwen2 model and its tokenizer to `out_dir`; return the path.

    The directory is written to a temporary sibling and renamed into place, so a crash never
    leaves a half-written model that a later run would try to load. It replaces only a model
    directory aha wrote, and a pre-trained one only with `replace_pretrained`.
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = _qwen2_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()

    def fill(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).save_pretrained(staging)
        (staging / SPEC_MARKER).write_text(json.dumps(spec.__dict__, indent=2) + "\n")

    return write_directory_atomic(out, fill, replace_pretrained=replace_pretrained)


def write_directory_atomic(out: str | os.PathLike, fill, *, replace_pretrained: bool) -> Path:
    """Call `fill(staging)` on a fresh temporary sibling of `out`, then rename it over `out`.

    A crash never leaves a half-written model directory that a later run would try to load.
    An existing `out` is replaced only when it is empty or aha wrote it (it holds
    SPEC_MARKER): a directory of the user's own is never deleted (FileExistsError), and a
    pre-trained model (PRETRAIN_RECORD) only with `replace_pretrained`.
    """
    out = Path(out)
    if out.exists() and not (out / SPEC_MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"'{out}' exists and was not written by aha; refusing to replace it "
                              "(choose a new directory)")
    if (out / PRETRAIN_RECORD).is_file() and not replace_pretrained:
        raise FileExistsError(f"'{out}' holds a model aha pre-trained; refusing to replace it with a random one "
                              "(choose a new directory)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def ensure_tiny_model(out_dir: str | os.PathLike, spec: TinyModelSpec) -> Path:
    """Build the tiny model at `out_dir` unless one with the same spec is already there."""
    out = Path(out_dir)
    marker = out / SPEC_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec.__dict__:
        return out
    return build_tiny_model(out, spec)
