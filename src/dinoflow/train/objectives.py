"""Training objectives: what differs between pretraining and distillation.

The loop (`loop.py`) is the same for both; an objective owns the networks and answers:
  views(images, step)        → crops (+ masks), deterministic in (seed, step, rank)
  loss(train_net, views, s)  → (scalar loss, metrics) for schedule values `s`
  after_step(s)              → EMA updates
  extra_state()              → tensors to checkpoint (loss centres, EMAs)
  export(out_dir)            → backbone.pth + config.yaml (+ heads.pth)

`PretrainObjective` is the DINOv2 recipe: student and EMA teacher (backbone + DINO head
[+ iBOT head]); DINO on CLS tokens (locals and globals vs the teacher's other global crop),
iBOT on masked global patch tokens, KoLeo on the student's global CLS tokens.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
from torch import nn

from dinoflow.config import CropConfig, HeadConfig, MaskConfig, PretrainConfig
from dinoflow.train.ssl_net import SSLNet


def step_seed(seed: int, step: int, rank: int) -> int:
    """One 63-bit seed per (run seed, step, rank): all per-step randomness derives from it."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def build_heads(embed_dim: int, head: HeadConfig) -> tuple[nn.Module, nn.Module | None]:
    from dinoflow.models import DINOHead

    shape = dict(use_bn=head.use_bn, nlayers=head.nlayers, hidden_dim=head.hidden_dim,
                 bottleneck_dim=head.bottleneck_dim, train_last_layer_norm=head.train_last_layer_norm)
    dino = DINOHead(embed_dim, head.out_dim, **shape)
    ibot = DINOHead(embed_dim, head.ibot_out_dim, **shape) if head.separate_ibot_head else None
    return dino, ibot


class Views:
    """Multi-crop views of one batch (+ iBOT masks when masking is on)."""

    def __init__(self, crops: CropConfig, masks: MaskConfig | None, patch_size: int, seed: int):
        from dinoflow.data.augment import MultiCropAugment

        self.aug = MultiCropAugment(crops)
        self.crops, self.mask_cfg, self.patch_size, self.seed = crops, masks, patch_size, seed

    def __call__(self, images: torch.Tensor, step: int, rank: int) -> dict[str, Any]:
        """images uint8 [B,3,S,S] on the training device → global_crops [2B,3,G,G],
        local_crops [nL·B,3,L,L] | None, and with masking: masks bool [2B,N], mask_indices [M],
        masks_weight [M], n_masked_patches [1]."""
        s = step_seed(self.seed, step, rank)
        gen = torch.Generator(device=images.device).manual_seed(s)
        out = self.aug(images, generator=gen)
        views: dict[str, Any] = {"global_crops": out["global_crops"],
                                 "local_crops": out["local_crops"] if self.crops.n_local > 0 else None}
        if self.mask_cfg is not None:
            from dinoflow.data.masking import collate_masks

            grid = self.crops.global_size // self.patch_size
            m = collate_masks(out["global_crops"].shape[0], (grid, grid), self.mask_cfg, random.Random(s))
            dev = images.device
            views.update(masks=m["masks"].to(dev), mask_indices=m["mask_indices_list"].to(dev),
                         masks_weight=m["masks_weight"].to(dev), n_masked_patches=m["n_masked_patches"].to(dev))
        return views


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target ← m·target + (1−m)·source, parameter by parameter (local shards under FSDP)."""
    def local(p):
        return p.to_local() if hasattr(p, "to_local") else p

    t = [local(p) for p in target.parameters()]
    s = [local(p).detach() for p in source.parameters()]
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


class RecipeLosses:
    """DINO + iBOT + KoLeo with the recipe's normalisations and scalings, shared by pretraining
    and head-based distillation."""

    def __init__(self, loss_cfg, cls_dim: int, patch_dim: int, device: torch.device):
        from dinoflow.losses import DINOLoss, iBOTPatchLoss, KoLeoLoss

        self.cfg = loss_cfg
        self.dino = DINOLoss(cls_dim, student_temp=loss_cfg.student_temp, center_momentum=loss_cfg.center_momentum).to(device)
        self.ibot = iBOTPatchLoss(patch_dim, student_temp=loss_cfg.student_temp, center_momentum=loss_cfg.center_momentum).to(device)
        self.koleo = KoLeoLoss()

    def state(self) -> dict[str, torch.Tensor]:
        # The centre update of the step that just ended is still queued (it is applied lazily when
        # the next targets are computed): apply it now, or a checkpoint holds the centre one step
        # behind and a resumed run's next targets differ from the uninterrupted run's.
        self.dino.apply_center_update()
        self.ibot.apply_center_update()
        return {"dino_center": self.dino.center, "ibot_center": self.ibot.center}

    @torch.no_grad()
    def teacher_probs(self, cls_logits: torch.Tensor, patch_logits: torch.Tensor, temp: float,
                      n_patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cls_logits [2B,K] (already crop-swapped), patch_logits [M,K'] → ([2,B,K], [M,K'])."""
        if self.cfg.centering == "softmax":
            cls_p = self.dino.softmax_center_teacher(cls_logits, teacher_temp=temp)
            self.dino.update_center(cls_logits)
            patch_p = self.ibot.softmax_center_teacher(patch_logits, teacher_temp=temp)
            self.ibot.update_center(patch_logits)
        else:
            cls_p = self.dino.sinkhorn_knopp_teacher(cls_logits, teacher_temp=temp)
            patch_p = self.ibot.sinkhorn_knopp_teacher(patch_logits, teacher_temp=temp, n_masked_patches_tensor=n_patches)
        return cls_p.view(2, -1, cls_p.shape[-1]), patch_p

    def student_terms(self, out: dict[str, torch.Tensor], cls_p: torch.Tensor, patch_p: torch.Tensor, *,
                      n_local: int, masks: torch.Tensor, n_patches: torch.Tensor,
                      masks_weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total and its terms, with the official scalings."""
        lc = self.cfg
        n_terms = 2 * n_local + 2  # (student crop, other teacher crop) pairs
        terms: dict[str, torch.Tensor] = {}
        if n_local:
            terms["dino_local"] = self.dino(list(out["l_cls_logits"].chunk(n_local)), list(cls_p)) / n_terms
        terms["dino_global"] = self.dino([out["g_cls_logits"]], [cls_p.flatten(0, 1)]) * 2 / n_terms
        terms["koleo"] = sum(self.koleo(p) for p in out["g_cls"].chunk(2))
        # ×2 because both global crops are processed together, ×1/2 = 1/n_global (official scaling)
        terms["ibot"] = self.ibot.forward_masked(out["patch_logits"], patch_p, student_masks_flat=masks,
                                                 n_masked_patches=n_patches, masks_weight=masks_weight) * 2 * 0.5
        loss = (lc.dino_weight * (terms.get("dino_local", 0.0) + terms["dino_global"])
                + lc.koleo_weight * terms["koleo"] + lc.ibot_weight * terms["ibot"])
        return loss, {k: float(t.detach()) for k, t in terms.items()}


class PretrainObjective:
    def __init__(self, cfg: PretrainConfig, device: torch.device):
        from dinoflow.models import backbone_from_config

        self.cfg = cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        backbone = backbone_from_config(cfg.model)
        dino_head, ibot_head = build_heads(backbone.embed_dim, cfg.head)
        self.student = SSLNet(backbone, dino_head, ibot_head).to(device)
        teacher_cfg = cfg.model.model_copy(update={"drop_path_rate": 0.0})
        t_backbone = backbone_from_config(teacher_cfg)
        t_dino, t_ibot = build_heads(t_backbone.embed_dim, cfg.head)
        self.teacher = SSLNet(t_backbone, t_dino, t_ibot).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        ibot_dim = cfg.head.ibot_out_dim if cfg.head.separate_ibot_head else cfg.head.out_dim
        self.losses = RecipeLosses(cfg.loss, cfg.head.out_dim, ibot_dim, device)
        self.views = Views(cfg.crops, cfg.masks, cfg.model.patch_size, cfg.seed)

    # -- the loop's interface
    def train_module(self) -> nn.Module:
        return self.student

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.losses.state()

    def loss(self, net: nn.Module, v: dict[str, Any], s: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            t = self.teacher(v["global_crops"], patch_index=v["mask_indices"])
            cls_logits = torch.cat(t["g_cls_logits"].chunk(2)[::-1])  # student crop i ↔ teacher crop 1-i
            cls_p, patch_p = self.losses.teacher_probs(cls_logits, t["patch_logits"], s["teacher_temp"],
                                                       v["n_masked_patches"])
        out = net(v["global_crops"], v["local_crops"], masks=v["masks"], patch_index=v["mask_indices"])
        n_local = self.cfg.crops.n_local if v["local_crops"] is not None else 0
        return self.losses.student_terms(out, cls_p, patch_p, n_local=n_local, masks=v["masks"],
                                         n_patches=v["n_masked_patches"], masks_weight=v["masks_weight"])

    def after_step(self, net: nn.Module, s: dict[str, float]) -> None:
        ema_update(self.teacher, unwrap(net), s["momentum"])

    def export(self, out_dir, is_main: bool = True) -> None:
        """Collective under FSDP (every rank calls it); rank 0 writes backbone.pth, config.yaml, heads.pth."""
        from dinoflow.io import atomic_path
        from dinoflow.models import backbone_from_config, export_backbone

        sd = full_state_dict(self.teacher)
        if not is_main:
            return
        backbone = backbone_from_config(self.cfg.model)
        backbone.load_state_dict(_sub(sd, "backbone."))
        export_backbone(backbone, f"{out_dir}/backbone.pth", model_cfg=self.cfg.model)
        heads = {"dino_head": _sub(sd, "dino_head.")}
        if self.teacher.ibot_head is not None:
            heads["ibot_head"] = _sub(sd, "ibot_head.")
        with atomic_path(f"{out_dir}/heads.pth") as tmp:
            torch.save(heads, tmp)


def _sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU. Collective when the module is FSDP2-sharded: every rank
    must call it (ranks other than 0 may discard the result)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(unwrap(module), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def deepcopy_frozen(module: nn.Module) -> nn.Module:
    m = copy.deepcopy(module)
    m.requires_grad_(False)
    return m
