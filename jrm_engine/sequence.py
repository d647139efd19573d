"""Token layout of one candidate: `[vs][source][ve] [vs][edited][ve] instruction <reward> explanation <eos>`.

The instruction follows both images, so under causal attention its tokens see the source and the edit: checking
the edit against the instruction has one place where all three are visible, right before `<reward>`. On the
embedded default's seed this order learnt more than the instruction between or before the images, and no less on
another seed (benchmarks/NOTES-cpu-training.md). G candidates for one source share the prefix `[vs][source][ve]`
(group scoring). The explanation comes after `<reward>` so that the reward token's state never sees it: training
and scoring compute the same reward. The instruction is tokenised on its own, so the ids a scorer builds equal the
ids the trainer built.
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

    def text_ids(self, text: str | list[str]) -> list[int] | list[list[int]]:
        """Token ids of a text, or of each text of a list in one tokenizer call, with no special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, instruction_ids: list[int]) -> list[int]:
        """Everything up to and including `<reward>`: what scoring runs."""
        return self.image_block() + self.image_block() + instruction_ids + [self.ids.reward]

    def encode(self, instruction: str, explanation: str | None, *, record: str = "?") -> EncodedCandidate:
        return self.encode_many([(instruction, explanation, record)])[0]

    def encode_many(self, items: list[tuple[str, str | None, str]]) -> list[EncodedCandidate]:
        """`encode` of each (instruction, explanation or None, record), with one tokenizer call for all the texts:
        a training step's 128 calls took 6 ms, one call 2 ms."""
        for instruction, _, record in items:
            if not instruction or not instruction.strip():
                raise ValueError(f"record {record!r}: empty instruction")
        texts = [text for instruction, explanation, _ in items for text in (instruction, explanation) if text]
        tokens = iter(self.text_ids(texts) if texts else [])
        return [self._assemble(next(tokens), next(tokens) if explanation else None, record)
                for _, explanation, record in items]

    def _assemble(self, instruction_ids: list[int], explanation_ids: list[int] | None, record: str
                  ) -> EncodedCandidate:
        ids = self.prompt_ids(instruction_ids)
        reward_pos = len(ids) - 1
        labels = [IGNORE_INDEX] * len(ids)
        if explanation_ids is not None:
            target = explanation_ids + [self.ids.eos]
            ids = ids + target[:-1]  # the last target (eos) is predicted by the last explanation token
            # The first explanation token is predicted at <reward>: the LM loss trains the state the head reads.
            labels = [IGNORE_INDEX] * reward_pos + target
        if len(ids) > self.max_length:
            raise ValueError(f"record {record!r}: sequence of {len(ids)} tokens exceeds model.max_length="
                             f"{self.max_length}")
        return EncodedCandidate(ids, reward_pos, labels)
