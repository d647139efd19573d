"""A small module with exactly the scoring-graph contract, compiled to an AOTInductor package for runtime tests.

Until the real scoring graph is exported, the runtime is tested against this stand-in: same inputs, dtypes and
dynamic dims as the contract in docs/CONTRIBUTING.md, and a reward that depends on every input element (pixels of both
images, each token id, its position, text_lengths, and the zero padding), so a request that is mis-batched,
mis-padded or mixed with another request's data gives a different reward.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

INPUTS = ["source_pixels", "edited_pixels", "text_ids", "text_lengths"]


class ToyScoringGraph(torch.nn.Module):
    def __init__(self, image_size: int, vocab_size: int, max_text_len: int, seed: int = 0, log_sigma: bool = False):
        super().__init__()
        self.log_sigma = log_sigma  # a second output, like the uncertainty reward head
        g = torch.Generator().manual_seed(seed)
        pix = image_size * image_size * 3
        self.w_source = torch.nn.Parameter(torch.randn(pix, generator=g) / pix, requires_grad=False)
        self.w_edited = torch.nn.Parameter(torch.randn(pix, generator=g) / pix, requires_grad=False)
        self.embed = torch.nn.Parameter(torch.randn(vocab_size, generator=g), requires_grad=False)
        self.w_pos = torch.nn.Parameter(torch.randn(max_text_len, generator=g), requires_grad=False)

    def forward(self, source_pixels, edited_pixels, text_ids, text_lengths):
        b, text_len = text_ids.shape
        src = source_pixels.reshape(b, -1).float() / 255.0  # (B, S*S*3)
        edt = edited_pixels.reshape(b, -1).float() / 255.0
        image_term = torch.tanh(src @ self.w_source - edt @ self.w_edited)  # (B,)
        valid = torch.arange(text_len, device=text_ids.device)[None, :] < text_lengths[:, None]  # (B, L)
        tokens = self.embed[text_ids] * (1.0 + self.w_pos[:text_len])[None, :]
        text_term = (tokens * valid).sum(1) / text_lengths.float()
        # Padding must be 0 (the contract): any other value changes the reward.
        padding_term = ((text_ids * ~valid).sum(1)).float() * 0.5
        rewards = image_term + 0.1 * text_term + padding_term + 0.01 * text_lengths.float()
        if self.log_sigma:
            return rewards, torch.tanh(text_term) - image_term
        return rewards


class ToyGroupGraph(torch.nn.Module):
    """The group engine's contract over a ToyScoringGraph: one source and instruction, G candidates."""

    def __init__(self, single: ToyScoringGraph):
        super().__init__()
        self.single = single

    def forward(self, source_pixels, text_ids, text_lengths, edited_pixels):
        g = edited_pixels.shape[0]
        return self.single(source_pixels.expand(g, -1, -1, -1), edited_pixels, text_ids.expand(g, -1),
                           text_lengths.expand(g))


def build_toy_package(out_dir: Path, image_size: int = 28, vocab_size: int = 512, buckets=(8, 16, 32),
                      max_batch: int = 16, device: str = "cpu", log_sigma: bool = False,
                      max_group: int = 0) -> tuple[Path, ToyScoringGraph]:
    """Compile one package with a dynamic text length shared by every bucket; write its runtime manifest.

    One package serves all buckets because each bucket then costs no extra compile (tests compile once); the
    manifest format also allows one package per bucket, which the real graph may need. With max_group, also a
    group package for up to max_group candidates.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    module = ToyScoringGraph(image_size, vocab_size, max(buckets), log_sigma=log_sigma).eval().to(device)
    b, text_len = 2, buckets[0]  # example sizes > 1, or export specialises them
    g = torch.Generator().manual_seed(1)
    example = (
        torch.randint(0, 256, (b, image_size, image_size, 3), generator=g, dtype=torch.uint8).to(device),
        torch.randint(0, 256, (b, image_size, image_size, 3), generator=g, dtype=torch.uint8).to(device),
        torch.randint(1, vocab_size, (b, text_len), generator=g).to(device),
        torch.tensor([text_len, text_len - 1]).to(device),
    )
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    length = torch.export.Dim("text_len", min=2, max=max(buckets))
    shapes = {"source_pixels": {0: batch}, "edited_pixels": {0: batch}, "text_ids": {0: batch, 1: length},
              "text_lengths": {0: batch}}
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=shapes)
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(out_dir / "toy.pt2"))
        if max_group:
            group_shapes = {"source_pixels": None, "text_ids": {1: length}, "text_lengths": None,
                            "edited_pixels": {0: torch.export.Dim("group", min=1, max=max_group)}}
            group_program = torch.export.export(ToyGroupGraph(module).eval(), (example[0][:1], example[2][:1],
                                                example[3][:1], example[1]), dynamic_shapes=group_shapes)
            torch._inductor.aoti_compile_and_package(group_program, package_path=str(out_dir / "toy.group.pt2"))
    manifest = {
        "format": "jrm-runtime-manifest", "version": 1, "backend": "aoti", "device": device,
        "image_size": image_size, "max_batch": max_batch, "vocab_size": vocab_size,
        "inputs": INPUTS, "outputs": ["rewards", "log_sigma"] if log_sigma else ["rewards"], "torch_version": torch.__version__,
        "buckets": [{"text_len": n, "package": Path(package).name} for n in buckets],
    }
    if max_group:
        manifest["group"] = {"package": "toy.group.pt2", "max_group": max_group}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir / "manifest.json", module
