"""Presets and hub architectures: parameter counts and the official checkpoint layout."""

import pytest
import torch

from dinoflow.errors import DinoflowError
from dinoflow.models import HUB_NAMES, build_backbone, build_hub_backbone, hub_kwargs, swiglu_hidden_dim

# the DINOv2 paper's parameter counts (official hub builds: img 518, patch 14, LayerScale).
PAPER_PARAMS = {
    "vit_small": 22_056_576,
    "vit_base": 86_580_480,
    "vit_large": 304_368_640,
    "vit_giant2": 1_136_480_768,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_param_count_vit_small_allocated():
    assert n_params(build_backbone("vit_small", img_size=518, layerscale_init=1.0)) == PAPER_PARAMS["vit_small"]


@pytest.mark.parametrize("arch", ["vit_small", "vit_base", "vit_large", "vit_giant2"])
def test_param_counts_on_meta_device(arch):
    with torch.device("meta"):
        model = build_backbone(arch, img_size=518, layerscale_init=1.0)
    assert n_params(model) == PAPER_PARAMS[arch]


def test_small_presets_have_the_documented_shapes():
    for arch, (dim, depth, heads) in {
        "vit_pico": (64, 3, 2),
        "vit_mini": (128, 4, 4),
        "vit_tiny": (192, 12, 3),
    }.items():
        m = build_backbone(arch, patch_size=7, img_size=28)
        assert (m.embed_dim, m.n_blocks, m.num_heads) == (dim, depth, heads)
        assert len(m.block_list()) == depth


def official_vits14_layout(registers: int) -> dict[str, tuple]:
    """The hub checkpoint layout written out by hand from the published checkpoints' key names (independent of the model code)."""
    d, h = 384, 1536
    layout = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1370, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, 14, 14),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    if registers:
        layout["register_tokens"] = (1, registers, d)
    for i in range(12):
        b = f"blocks.{i}."
        layout.update(
            {
                b + "norm1.weight": (d,),
                b + "norm1.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d),
                b + "attn.qkv.bias": (3 * d,),
                b + "attn.proj.weight": (d, d),
                b + "attn.proj.bias": (d,),
                b + "ls1.gamma": (d,),
                b + "norm2.weight": (d,),
                b + "norm2.bias": (d,),
                b + "mlp.fc1.weight": (h, d),
                b + "mlp.fc1.bias": (h,),
                b + "mlp.fc2.weight": (d, h),
                b + "mlp.fc2.bias": (d,),
                b + "ls2.gamma": (d,),
            }
        )
    return layout


@pytest.mark.parametrize("name,registers,n_keys", [("dinov2_vits14", 0, 175), ("dinov2_vits14_reg", 4, 176)])
def test_hub_vits14_state_dict_layout(name, registers, n_keys):
    with torch.device("meta"):
        sd = build_hub_backbone(name).state_dict()
    assert len(sd) == n_keys
    assert {k: tuple(v.shape) for k, v in sd.items()} == official_vits14_layout(registers)


def test_hub_kwargs_register_models_interpolate_to_a_size_with_antialias():
    reg, plain = hub_kwargs("dinov2_vitb14_reg"), hub_kwargs("dinov2_vitb14")
    assert (reg["num_register_tokens"], reg["interpolate_antialias"], reg["interpolate_offset"]) == (4, True, 0.0)
    assert (plain["num_register_tokens"], plain["interpolate_antialias"], plain["interpolate_offset"]) == (
        0,
        False,
        0.1,
    )
    for kw in (reg, plain):
        assert (kw["img_size"], kw["patch_size"], kw["layerscale_init"], kw["block_chunks"]) == (518, 14, 1.0, 0)
    assert len(HUB_NAMES) == 8
    with pytest.raises(DinoflowError, match="dinov2_vits14"):
        hub_kwargs("dinov2_vits16")


def test_giant2_uses_fused_swiglu_with_hidden_4096():
    assert swiglu_hidden_dim(1536) == 4096
    with torch.device("meta"):
        g = build_hub_backbone("dinov2_vitg14")
    sd = g.state_dict()
    assert tuple(sd["blocks.0.mlp.w12.weight"].shape) == (8192, 1536)
    assert tuple(sd["blocks.0.mlp.w12.bias"].shape) == (8192,)
    assert tuple(sd["blocks.39.mlp.w3.weight"].shape) == (1536, 4096)
    assert not any(".fc1." in k for k in sd)
    # Forcing an MLP on giant2 (or SwiGLU elsewhere) is possible and changes the names.
    with torch.device("meta"):
        assert "blocks.0.mlp.fc1.weight" in build_backbone("vit_giant2", ffn_layer="mlp").state_dict()
    assert (
        "blocks.0.mlp.w12.weight"
        in build_backbone("vit_pico", patch_size=7, img_size=28, ffn_layer="swiglu").state_dict()
    )


def test_unknown_arch_and_bad_sizes_are_clear_errors():
    with pytest.raises(DinoflowError, match="vit_small"):
        build_backbone("vit_huge")
    with pytest.raises(DinoflowError, match="not divisible"):
        build_backbone("vit_pico", patch_size=7, img_size=30)
    with pytest.raises(DinoflowError, match="ffn_layer"):
        build_backbone("vit_pico", patch_size=7, img_size=28, ffn_layer="moe")


def test_config_arch_choices_come_from_the_preset_table():
    import typing

    import pydantic

    from dinoflow.config import Arch, ModelConfig
    from dinoflow.config.archs import ARCH_SPECS, ARCHS

    assert typing.get_args(Arch) == ARCHS == tuple(ARCH_SPECS)
    assert [ModelConfig(arch=a).arch for a in ARCHS] == list(ARCHS)
    with pytest.raises(pydantic.ValidationError, match="vit_giant2"):
        ModelConfig(arch="vit_huge")
