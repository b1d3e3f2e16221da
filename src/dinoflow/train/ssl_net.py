"""Backbone + DINO head (+ optional separate iBOT head) as ONE module with one forward.

One forward per network matters for the wrappers: DDP expects one forward per backward, and
FSDP2 gathers the root's parameters only inside the root module's forward, so calling
`net.backbone(...)` and `net.dino_head(...)` separately would bypass it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from dinoflow.models.vit import DinoVisionTransformer


class SSLNet(nn.Module):
    def __init__(self, backbone: DinoVisionTransformer, dino_head: nn.Module, ibot_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head  # None: patch tokens share the DINO head (the ViT-S/B recipe)

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        patch_index: torch.Tensor | None = None,
        project_patches: bool = True,
        patch_parts: bool = False,
    ) -> dict[str, torch.Tensor]:
        """
        global_crops [G,3,H,W] (G = 2·B, crop-major), local_crops [L,3,h,w] or None,
        masks bool [G, N] or None (iBOT: masked patches get the mask token),
        patch_index long [M]: flat indices into the [G·N] global patch tokens sent through the head.

        Returns: g_cls [G,D] (backbone CLS), g_cls_logits [G,K],
        l_cls_logits [L,K] (if locals), and for the picked patches (if patch_index and
        project_patches) either patch_logits [M,K'] or, with `patch_parts`, the factors of those
        logits: patch_z [M,bottleneck] and patch_w [K',bottleneck] (patch_logits = patch_z @ patch_wᵀ),
        so a chunked loss never holds [M, K'] at once.
        """
        wanted = patch_index is not None and project_patches
        none = torch.zeros(0, dtype=torch.long, device=global_crops.device)  # CLS only
        crops, crop_masks, keep = [global_crops], [masks], [patch_index if wanted else none]
        if local_crops is not None:
            crops, crop_masks, keep = crops + [local_crops], crop_masks + [None], keep + [none]
        feats = self.backbone.forward_kept(crops, crop_masks, keep)  # only the tokens the heads use
        g_cls = feats[0]["x_norm_clstoken"]
        out = {"g_cls": g_cls}
        picked = feats[0]["x_norm_patchtokens_kept"] if wanted else None
        loc = feats[1] if local_crops is not None else None
        cls_in = [g_cls] + ([loc["x_norm_clstoken"]] if loc is not None else [])
        shared = self.ibot_head is None and picked is not None
        if shared and picked is not None:
            cls_in.append(picked)
        sizes = [t.shape[0] for t in cls_in]
        if shared and patch_parts:
            z, w = self.dino_head(torch.cat(cls_in), parts=True)
            zs = z.split(sizes)
            logits = [F.linear(part, w) for part in zs[:-1]]
            out["patch_z"], out["patch_w"] = zs[-1], w
        else:
            logits = self.dino_head(torch.cat(cls_in)).split(sizes)
        out["g_cls_logits"] = logits[0]
        if loc is not None:
            out["l_cls_logits"] = logits[1]
        if picked is not None and self.ibot_head is not None:  # (not shared)
            if patch_parts:
                out["patch_z"], out["patch_w"] = self.ibot_head(picked, parts=True)
            else:
                out["patch_logits"] = self.ibot_head(picked)
        elif shared and not patch_parts:
            out["patch_logits"] = logits[-1]
        return out

    def param_modules(self) -> dict[str, nn.Module]:
        mods = {"backbone": self.backbone, "dino_head": self.dino_head}
        if self.ibot_head is not None:
            mods["ibot_head"] = self.ibot_head
        return mods
