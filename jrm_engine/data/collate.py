"""Preference pairs -> one padded batch of 2 sequences per pair (chosen, rejected; or a, b for ties)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..sequence import IGNORE_INDEX, SequenceLayout
from ..vision import VisionSpec, load_image, pixels_to_patches
from .records import PreferencePair


@dataclass
class Batch:
    input_ids: torch.Tensor  # [S, L] right-padded, S = 2 * pairs
    attention_mask: torch.Tensor  # [S, L]
    pixel_values: torch.Tensor  # [3 * P * num_patches, patch_dim]: each pair's source, first and second edit
    image_grid_thw: torch.Tensor  # [3 * P, 3]
    image_index: torch.Tensor  # [2 * S]: the image of each sequence's slots (source, edit); a pair shares its source
    reward_pos: torch.Tensor  # [S]
    lm_labels: torch.Tensor  # [S, L], aligned with input_ids
    chosen: torch.Tensor  # [P] indices into the S sequences
    rejected: torch.Tensor  # [P]
    tie_a: torch.Tensor  # [P_tie]
    tie_b: torch.Tensor  # [P_tie]
    num_labelled: int  # rows with an LM label, counted on the host so the fused loss needs no device sync
    num_explained: int  # sequences with an explanation, i.e. with a label at <reward> (counted on the host too)

    def to(self, device) -> "Batch":
        return Batch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in self.__dict__.items()})

    def first_labels(self) -> torch.Tensor:
        """[S] the first explanation token of each sequence, the one predicted at <reward> (-100: none)."""
        return self.lm_labels.gather(1, self.reward_pos[:, None])[:, 0]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask, pixel_values=self.pixel_values,
                    image_grid_thw=self.image_grid_thw, reward_pos=self.reward_pos, image_index=self.image_index)


class PairCollator:
    def __init__(self, layout: SequenceLayout, spec: VisionSpec):
        self.layout, self.spec = layout, spec

    def __call__(self, pairs: list[PreferencePair]) -> Batch:
        texts, images, image_index, chosen, rejected, tie_a, tie_b = [], [], [], [], [], [], []
        for pair in pairs:
            pair.validate()
            first, second = (pair.b, pair.a) if pair.preference == "b" else (pair.a, pair.b)
            i = len(texts)
            (tie_a if pair.preference == "tie" else chosen).append(i)
            (tie_b if pair.preference == "tie" else rejected).append(i + 1)
            source = len(images)
            images.append(load_image(pair.source, self.spec.image_size, name=f"record {pair.id!r} source image"))
            for tag, cand in (("first", first), ("second", second)):
                texts.append((pair.instruction, cand.explanation, pair.id))
                image_index += [source, len(images)]
                images.append(load_image(cand.image, self.spec.image_size, name=f"record {pair.id!r} {tag} edit"))
        encoded = self.layout.encode_many(texts)
        length = max(len(e.input_ids) for e in encoded)
        n = len(encoded)
        input_ids = torch.full((n, length), self.layout.ids.pad, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        lm_labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(encoded):
            input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            attention_mask[i, : len(e.input_ids)] = 1
            lm_labels[i, : len(e.lm_labels)] = torch.tensor(e.lm_labels)
        pixels = torch.from_numpy(np.stack(images))  # [2S, H, W, 3] uint8
        patches = pixels_to_patches(pixels, self.spec).reshape(-1, self.spec.patch_dim)
        grid = torch.tensor([[1, self.spec.grid, self.spec.grid]] * len(images), dtype=torch.long)
        as_idx = lambda xs: torch.tensor(xs, dtype=torch.long)
        explained = sum(e.lm_labels[e.reward_pos] != IGNORE_INDEX for e in encoded)
        return Batch(input_ids, attention_mask, patches, grid, as_idx(image_index),
                     as_idx([e.reward_pos for e in encoded]), lm_labels,
                     as_idx(chosen), as_idx(rejected), as_idx(tie_a), as_idx(tie_b),
                     int((lm_labels != IGNORE_INDEX).sum()), explained)
