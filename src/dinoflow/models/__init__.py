"""DINOv2-compatible backbones, heads, and their weights.

from dinoflow.models import build_backbone, load_backbone, DINOHead
vit = build_backbone("vit_small", img_size=224)          # training-style (LayerScale 1e-5)
hub = build_hub_backbone("dinov2_vits14_reg")             # official hub architecture
hub = load_backbone("dinov2_vits14_reg4_pretrain.pth")    # architecture inferred, strict load
"""

from dinoflow.config.model_size import swiglu_hidden_dim
from dinoflow.models.artifact import BackboneArtifact, BackboneNotFound
from dinoflow.models.heads import DINOHead, WeightNormLinear, convert_official_head_state_dict, heads_from_config
from dinoflow.models.layers import Attention, Block, DropPath, LayerScale, Mlp, PatchEmbed, SwiGLUFFN
from dinoflow.models.presets import ARCH_SPECS, HUB_NAMES, ArchSpec, arch_spec, hub_kwargs
from dinoflow.models.vit import DinoVisionTransformer, backbone_from_config, build_backbone, build_hub_backbone
from dinoflow.models.weights import (
    BackboneWeightsError,
    export_backbone,
    extract_backbone_state_dict,
    infer_model_config,
    load_backbone,
    load_backbone_weights,
    read_weights,
)

__all__ = [
    "ARCH_SPECS",
    "HUB_NAMES",
    "ArchSpec",
    "BackboneArtifact",
    "BackboneNotFound",
    "Attention",
    "BackboneWeightsError",
    "Block",
    "DINOHead",
    "DinoVisionTransformer",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFN",
    "WeightNormLinear",
    "arch_spec",
    "backbone_from_config",
    "build_backbone",
    "build_hub_backbone",
    "convert_official_head_state_dict",
    "export_backbone",
    "extract_backbone_state_dict",
    "heads_from_config",
    "hub_kwargs",
    "infer_model_config",
    "load_backbone",
    "load_backbone_weights",
    "read_weights",
    "swiglu_hidden_dim",
]
