"""`jrm explain CHECKPOINT`: have a trained JRM write its critique of one edit (greedy decoding from <reward>).

Scoring never needs this; it shows what the shared backbone learnt to say about an edit.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from .checkpoint import verify_safetensors
from .model import RewardModel
from .vision import load_image, pixels_to_patches


@torch.no_grad()
def explain(model: RewardModel, source, instruction: str, edited, max_new_tokens: int = 48) -> tuple[float, str]:
    """(reward, explanation) for one candidate."""
    model.eval()
    enc = model.layout.encode(instruction, None)
    size = model.spec.image_size
    pixels = torch.from_numpy(np.stack([load_image(source, size, name="source"),
                                        load_image(edited, size, name="edited")]))
    device = next(model.parameters()).device
    patches = pixels_to_patches(pixels, model.spec).reshape(-1, model.spec.patch_dim).to(device)
    grid = torch.tensor([[1, model.spec.grid, model.spec.grid]] * 2, device=device)
    ids = torch.tensor([enc.input_ids], device=device)
    mask = torch.ones_like(ids)
    reward = model(ids, mask, patches, grid, torch.tensor([enc.reward_pos], device=device)).rewards
    generated = model.backbone.generate(input_ids=ids, attention_mask=mask, pixel_values=patches,
                                        image_grid_thw=grid, mm_token_type_ids=model.token_types(ids),
                                        max_new_tokens=max_new_tokens, do_sample=False,
                                        eos_token_id=model.token_ids.eos, pad_token_id=model.token_ids.pad)
    text = model.tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    mu = reward.reshape(-1)[0].item()
    return mu, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jrm explain", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint folder written by the trainer")
    p.add_argument("--source", required=True, help="source image path")
    p.add_argument("--edited", required=True, help="edited image path")
    p.add_argument("--instruction", required=True, help="the editing instruction")
    p.add_argument("--max-new-tokens", type=int, default=48)
    args = p.parse_args(argv)
    try:
        verify_safetensors(args.checkpoint)
        model = RewardModel.from_pretrained(args.checkpoint)
        reward, text = explain(model, args.source, args.instruction, args.edited, args.max_new_tokens)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"reward: {reward:.4f}\nexplanation: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
