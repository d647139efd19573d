"""Token layout of one candidate: `[vs][source image][ve] instruction [vs][edited image][ve] <reward> explanation <eos>`.

The source image and instruction come first so that G candidates for one source share a prefix (group scoring),
and the explanation comes after `<reward>` so that, under causal attention, the reward token's state never sees it:
training and scoring compute the same reward. The instruction is tokenised on its own, so the ids a scorer builds
equal the ids the trainer built.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenIds:
    image: int
    vision_start: int
    vision_end: int
    reward: int
    eos: int
    pad: int


@dataclass
class EncodedCandidate:
    input_ids: list[int]
    reward_pos: int
    lm_labels: list[int]  # aligned with input_ids: position t predicts lm_labels[t]


class SequenceLayout:
    def __init__(self, tokenizer, ids: TokenIds, image_tokens: int, max_length: int):
        self.tokenizer = tokenizer
        self.ids = ids
        self.image_tokens = image_tokens
        self.max_length = max_length

    def image_block(self) -> list[int]:
        return [self.ids.vision_start] + [self.ids.image] * self.image_tokens + [self.ids.vision_end]

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, instruction: str, explanation: str | None, *, record: str = "?") -> EncodedCandidate:
        if not instruction or not instruction.strip():
            raise ValueError(f"record {record!r}: empty instruction")
        instr = self.text_ids(instruction)
        ids = self.image_block() + instr + self.image_block() + [self.ids.reward]
        reward_pos = len(ids) - 1
        labels = [IGNORE_INDEX] * len(ids)
        if explanation:
            target = self.text_ids(explanation) + [self.ids.eos]
            ids = ids + target[:-1]  # the last target (eos) is predicted by the last explanation token
            # The first explanation token is predicted at <reward>: the LM loss trains the state the head reads.
            labels = [IGNORE_INDEX] * reward_pos + target
        if len(ids) > self.max_length:
            raise ValueError(f"record {record!r}: sequence of {len(ids)} tokens exceeds model.max_length="
                             f"{self.max_length}")
        return EncodedCandidate(ids, reward_pos, labels)
