"""The CUDA path in fp32, fp16 and bf16 (runs only where a GPU is present)."""

from __future__ import annotations

import pytest
import torch

import gradeclip_utils as ge
from support.realistic import realistic_init

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_on_cuda_matches_fp32(precision):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a dog", "a red car", "a diagram"]
    full = ge.load_model("ViT-B-16", pretrained=None, device="cuda", precision="fp32")
    realistic_init(full.model, 0)
    half = ge.load_model("ViT-B-16", pretrained=None, device="cuda", precision=precision)
    half.model.load_state_dict({k: v.to(half.adapter.dtype) if v.is_floating_point() else v
                                for k, v in full.model.state_dict().items()})
    reference = ge.explain_image(full, pixels, prompts)
    got = ge.explain_image(half, pixels, prompts)
    assert got.maps.dtype == torch.float32 and torch.isfinite(got.maps).all()
    assert (got.scores - reference.scores).abs().max() < 2e-2
    heat_ref, heat = reference.heatmaps(), got.heatmaps()
    correlation = torch.corrcoef(torch.stack([heat_ref.flatten(), heat.flatten()]))[0, 1]
    assert correlation > 0.9
    words = ge.explain_text(half, pixels, prompts)
    assert torch.isfinite(words.token_importance).all()


def test_cuda_fp32_matches_cpu():
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    cpu = ge.load_model("ViT-B-16", pretrained=None, device="cpu")
    realistic_init(cpu.model, 0)
    gpu = ge.load_model("ViT-B-16", pretrained=None, device="cuda")
    gpu.model.load_state_dict(cpu.model.state_dict())
    a = ge.explain_image(cpu, pixels, ["a dog", "a cat"])
    b = ge.explain_image(gpu, pixels, ["a dog", "a cat"])
    assert (a.scores - b.scores).abs().max() < 1e-4
    assert (a.maps - b.maps).abs().max() < 1e-3 * max(1.0, float(a.maps.abs().max()))
