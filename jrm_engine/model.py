"""RewardModel: a Qwen-VL backbone, a `<reward>` token, and a reward head on that token's final hidden state.

The backbone's LM head is used only by the training loss (explanations) and by `explain`; scoring reads the
reward head alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import load_backbone
from .config import TOKEN_LAYOUT, JRMConfig
from .position_ids import shared_layout_position_ids
from .sequence import SequenceLayout, TokenIds
from .vision import VisionSpec

HEAD_FILE = "reward_head.safetensors"
JRM_FILE = "jrm.json"
# Backbones whose image features enter only through the input embeddings, so they may be computed once per unique
# image and scattered; Qwen3-VL also adds them inside the decoder (deepstack) and takes every image slot's pixels.
SHARED_IMAGE_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")


def repeat_shared_images(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, image_index: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches and grids of unique images (all one size, as the collator makes them) -> one copy per image slot."""
    patches = pixel_values.unflatten(0, (len(image_grid_thw), -1))  # [U, P, D]
    return patches[image_index].flatten(0, 1), image_grid_thw[image_index]


class RewardHead(nn.Module):
    """Linear or 2-layer MLP; `outputs` is 1 (Bradley-Terry) or 2 (mu, log sigma for the uncertainty loss)."""

    def __init__(self, hidden: int, kind: str, outputs: int):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(hidden, outputs)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, outputs))
        else:
            raise ValueError(f"model.reward_head must be 'linear' or 'mlp', got {kind!r}")
        self.kind, self.outputs = kind, outputs

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # fp32 whatever the backbone dtype: under autocast a Linear would round the reward to bf16 (1/32 at 6.0)
        if torch.is_autocast_enabled(h.device.type):
            with torch.autocast(h.device.type, enabled=False):
                out = self.net(h.float())
        else:
            out = self.net(h.float())
        return out[..., 0] if self.outputs == 1 else out


@dataclass
class RewardOutput:
    hidden: torch.Tensor  # [B, L, H] final hidden states (LM head not applied)
    rewards: torch.Tensor  # [B] or [B, 2] (mu, log sigma)
    features: torch.Tensor  # [B, H] the reward token's final hidden state


class RewardModel(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, config: JRMConfig, spec: VisionSpec):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.spec = spec
        reward_token = config.model.reward_token
        if reward_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [reward_token]})
        if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
            backbone.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        bc = backbone.config
        self.token_ids = TokenIds(
            image=bc.image_token_id, vision_start=bc.vision_start_token_id, vision_end=bc.vision_end_token_id,
            reward=tokenizer.convert_tokens_to_ids(reward_token),
            eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id)
        self.layout = SequenceLayout(tokenizer, self.token_ids, spec.num_tokens, config.model.max_length)
        self.shares_images = bc.model_type in SHARED_IMAGE_MODEL_TYPES
        hidden = bc.text_config.hidden_size
        outputs = 2 if config.loss.rank_loss == "bt_uncertainty" else 1
        self.head = RewardHead(hidden, config.model.reward_head, outputs)

    @property
    def lm_weight(self) -> torch.Tensor:
        return self.backbone.lm_head.weight  # [V, H]; may be tied to the input embeddings

    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 on image tokens, 0 elsewhere: without it Hugging Face gives image tokens 1-D positions instead of
        Qwen's 3-D (time, row, column) M-RoPE positions, and the model cannot tell where objects are."""
        return (input_ids == self.token_ids.image).int()

    def forward(self, input_ids, attention_mask, pixel_values, image_grid_thw, reward_pos,
                image_index=None) -> RewardOutput:
        """image_index [n_slots], optional: the sequences' image slots (in order) name rows of `pixel_values` /
        `image_grid_thw`, so an image several sequences share (a pair's source) is encoded once."""
        inner, types = self.backbone.model, self.token_types(input_ids)
        if image_index is not None and not self.shares_images:
            pixel_values, image_grid_thw = repeat_shared_images(pixel_values, image_grid_thw, image_index)
            image_index = None
        slot_grids = image_grid_thw if image_index is None else image_grid_thw[image_index]
        positions = shared_layout_position_ids(inner, input_ids, types, attention_mask, slot_grids)
        if image_index is None:
            out = inner(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                        image_grid_thw=image_grid_thw, mm_token_type_ids=types, position_ids=positions,
                        use_cache=False)
        else:
            features = torch.stack(inner.get_image_features(pixel_values, image_grid_thw).pooler_output)  # [U, N, H]
            slots = features[image_index].flatten(0, 1)  # [image tokens, H], in sequence order
            embeds = inner.get_input_embeddings()(input_ids)
            embeds = embeds.masked_scatter((input_ids == self.token_ids.image)[..., None], slots.to(embeds.dtype))
            out = inner(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask,
                        image_grid_thw=slot_grids, mm_token_type_ids=types, position_ids=positions, use_cache=False)
        hidden = out.last_hidden_state  # [B, L, H]
        features = hidden[torch.arange(hidden.shape[0], device=hidden.device), reward_pos]  # [B, H]
        return RewardOutput(hidden, self.head(features), features)

    # ---- persistence -------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Backbone as a normal HF model folder under `backbone/`, the head and the config beside it.

        `state_dict` (this module's keys): weights to write instead of the live ones, e.g. the full weights
        gathered from FSDP2 shards."""
        folder = Path(folder)
        state_dict = self.state_dict() if state_dict is None else state_dict
        part = lambda prefix: {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.backbone.save_pretrained(folder / "backbone", state_dict=part("backbone."))
        self.tokenizer.save_pretrained(folder / "backbone")
        (folder / "backbone" / "preprocessor_config.json").write_text(
            json.dumps(self.spec.to_preprocessor_config(), indent=2))
        save_file({k: v.contiguous() for k, v in part("head.").items()}, folder / HEAD_FILE)
        (folder / JRM_FILE).write_text(self.config.to_json())

    @classmethod
    def from_backbone(cls, folder: str | Path, config: JRMConfig) -> "RewardModel":
        backbone, tokenizer = load_backbone(folder, attn_implementation=config.model.attn_implementation)
        spec = VisionSpec.from_model_folder(folder, config.model.image_size)
        return cls(backbone, tokenizer, config, spec)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "RewardModel":
        folder = Path(folder)
        if not (folder / JRM_FILE).is_file():
            raise ValueError(f"{folder}: not a jrm_engine checkpoint (no {JRM_FILE})")
        saved = json.loads((folder / JRM_FILE).read_text())
        layout = saved.get("model", {}).get("token_layout", "source-instruction-edited")  # older checkpoints
        if layout != TOKEN_LAYOUT:
            raise ValueError(f"{folder}: trained with the token layout {layout!r}; this version scores "
                             f"{TOKEN_LAYOUT!r} (jrm_engine/sequence.py), so its rewards would be wrong. Retrain it, "
                             f"or score it with the jrm_engine version that trained it")
        config = JRMConfig.from_dict(saved)
        model = cls.from_backbone(folder / "backbone", config)
        model.head.load_state_dict(load_file(folder / HEAD_FILE))
        return model
