"""Loading a vision-language backbone from a local folder, and building the tiny one the default job trains.

The tiny backbone is saved as an ordinary model folder (config, safetensors weights, tokenizer,
preprocessor_config.json) and loaded back through the same `from_pretrained` path a real checkpoint takes.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

from .config import TinyBackboneConfig
from .short_attention import use_short_attention
from .vision import VisionSpec
from .vision_attention import batch_vision_attention
from .vision_patch_embed import linear_patch_embed

SPECIAL_TOKENS = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "[UNK]"]


def _model_classes() -> dict[str, type]:
    from transformers import (Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration,
                              Qwen3VLForConditionalGeneration)
    return {
        "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
        "qwen2_vl": Qwen2VLForConditionalGeneration,
        "qwen3_vl": Qwen3VLForConditionalGeneration,
    }


SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")


def load_backbone(folder: str | Path, *, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """(model, tokenizer) from a local checkpoint folder; a clear error for anything we do not support."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--backbone {folder}: not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"--backbone {folder}: model_type {config.model_type!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    model = _model_classes()[config.model_type].from_pretrained(
        folder, dtype=dtype, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    use_short_attention(model)  # SDPA, except short sequences on the CPU: bmm -> softmax -> bmm, 1.4-2.5x faster
    batch_vision_attention(model)  # same attention, one call instead of one per image window
    linear_patch_embed(model)  # same map, one GEMM instead of a Conv3d
    return model, tokenizer


def build_word_tokenizer(words: list[str], extra_special: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a closed vocabulary (the synthetic data's), built in code."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + sorted(set(words)):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:4] + list(extra_special)})
    return fast


def build_tiny_backbone(folder: str | Path, words: list[str], arch: TinyBackboneConfig, spec: VisionSpec,
                        reward_token: str, seed: int = 0) -> Path:
    """Write a random-init Qwen2.5-VL-architecture model folder. Returns the folder."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    # The reward token is in the vocabulary from the start, so RewardModel never resizes the tiny embeddings.
    tokenizer = build_word_tokenizer(words, (reward_token,))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = arch.text_hidden // arch.text_heads
    if 2 * sum(arch.mrope_section) != head_dim:
        raise ValueError(f"mrope_section {arch.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=arch.text_hidden, intermediate_size=arch.text_intermediate,
            num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
            num_key_value_heads=arch.text_kv_heads, vocab_size=len(tokenizer), max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta,
                             "mrope_section": list(arch.mrope_section)},
            tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
            pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(
            depth=arch.vision_layers, hidden_size=arch.vision_hidden, intermediate_size=arch.vision_intermediate,
            num_heads=arch.vision_heads, out_hidden_size=arch.text_hidden, patch_size=spec.patch_size,
            spatial_merge_size=spec.merge_size, temporal_patch_size=spec.temporal_patch_size, window_size=112,
            fullatt_block_indexes=[arch.vision_layers - 1]),
        image_token_id=ids["<|image_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(spec.to_preprocessor_config(), indent=2))
    return folder
