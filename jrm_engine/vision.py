"""Image preprocessing shared by training and every scoring path, so there is no train/serve skew.

Images are resized on the host to a fixed square size (uint8 RGB, [H, W, 3]); normalisation and patch extraction
are plain tensor ops (`pixels_to_patches`), so the exported scoring graph can run them on the device.
The patch layout matches the Qwen2-VL family's image processor (temporal patch repeated, 2x2 merge blocks
contiguous).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import DEFAULT_MAX_PIXELS, ImageLike, to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["ImageLike", "VisionSpec", "load_image", "pixels_to_patches"]


@dataclass(frozen=True)
class VisionSpec:
    image_size: int = 84
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        unit = self.patch_size * self.merge_size
        if self.image_size <= 0 or self.image_size % unit:
            raise ValueError(f"image_size must be a positive multiple of {unit}, got {self.image_size}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_tokens(self) -> int:
        """Language-model tokens per image after the 2x2 patch merger."""
        return self.num_patches // (self.merge_size**2)

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_model_folder(cls, folder: str | Path, image_size: int) -> "VisionSpec":
        """Read patch sizes and normalisation from a checkpoint's preprocessor_config.json when it has one."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return cls(image_size=image_size)
        pc = json.loads(path.read_text())
        return cls(
            image_size=image_size,
            patch_size=pc.get("patch_size", 14),
            merge_size=pc.get("merge_size", 2),
            temporal_patch_size=pc.get("temporal_patch_size", 2),
            mean=tuple(pc.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(pc.get("image_std", OPENAI_CLIP_STD)),
        )

    def to_preprocessor_config(self) -> dict:
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "min_pixels": self.image_size**2,
            "max_pixels": self.image_size**2,
        }


def load_image(image: ImageLike, size: int, *, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Any supported image input -> uint8 RGB [size, size, 3], resized bicubic. `name` identifies the input in
    errors; validation and conversion (grayscale, alpha, palette, 16-bit, float, size limit) are `images.to_rgb`'s."""
    # A uint8 RGB array already at the size (what the synthetic renderer makes) needs no conversion: a copy skips
    # the PIL round trip, which returns the same pixels at ~35 us an image (3 ms of a tiny-default training step).
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (size, size, 3) \
            and size * size <= (DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)):
        return image.copy()
    pil = to_rgb(image, name=name, max_pixels=max_pixels)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BICUBIC)
    return np.asarray(pil, dtype=np.uint8)


def pixels_to_patches(pixels: torch.Tensor, spec: VisionSpec) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 patches [B, num_patches, patch_dim] in the Qwen-VL processor's order."""
    b = pixels.shape[0]
    g, m, p, tp = spec.grid, spec.merge_size, spec.patch_size, spec.temporal_patch_size
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    x = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    x = (x - mean) / std  # [B, 3, H, W]
    x = x.reshape(b, 3, g // m, m, p, g // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # [B, gh/m, gw/m, m, m, 3, p, p]
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, tp, -1, -1)
    return x.reshape(b, g * g, spec.patch_dim)
