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
from dinoflow.train.recipe_losses import RecipeLosses
from dinoflow.train.ssl_net import SSLNet
from dinoflow.train.step import unwrap


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
    """Multi-crop views of one batch (+ iBOT masks when masking is on), in two halves:

    `prepare(images, step)` runs in a data-loader worker (CPU): the iBOT masks, and the crops
    too when `crops_on_host` (training on a CPU); `finish(prepared, step, device)` runs in
    the loop: it moves everything to the device and, when the crops are not made yet, crops
    there (on a GPU, where the batched augmentation is fast). Either way each step's
    randomness derives from (seed, step, rank) alone, so the split never changes the numbers
    on a given device.
    """

    def __init__(self, crops: CropConfig, masks: MaskConfig | None, patch_size: int, seed: int):
        from dinoflow.data.augment import MultiCropAugment

        self.aug = MultiCropAugment(crops)
        self.crops, self.mask_cfg, self.patch_size, self.seed = crops, masks, patch_size, seed
        self.rank, self.crops_on_host = 0, False

    def bind(self, rank: int, crops_on_host: bool) -> "Views":
        self.rank, self.crops_on_host = rank, crops_on_host
        return self

    def _crops(self, images, seed: int, device: torch.device) -> dict[str, Any]:
        out = self.aug(images, generator=torch.Generator(device=device).manual_seed(seed))
        return {"global_crops": out["global_crops"],
                "local_crops": out["local_crops"] if self.crops.n_local > 0 else None}

    def prepare(self, images, step: int) -> dict[str, Any]:
        """uint8 images [B,3,H,W] (or a list of [3,H,W]) on the CPU → masks (bool [2B,N],
        mask_indices [M], masks_weight [M], n_masked_patches [1]) and either the crops or the images."""
        s = step_seed(self.seed, step, self.rank)
        out: dict[str, Any] = {}
        if self.mask_cfg is not None:
            from dinoflow.data.masking import collate_masks

            grid = self.crops.global_size // self.patch_size
            m = collate_masks(2 * len(images), (grid, grid), self.mask_cfg, random.Random(s))
            out.update(masks=m["masks"], mask_indices=m["mask_indices_list"], masks_weight=m["masks_weight"],
                       n_masked_patches=m["n_masked_patches"])
        if self.crops_on_host:
            out.update(self._crops(images, s, torch.device("cpu")))
        else:
            out["images"] = images
        return out

    def finish(self, prepared: dict[str, Any], step: int, device: torch.device) -> dict[str, Any]:
        """→ global_crops [2B,3,G,G], local_crops [nL·B,3,L,L] | None (+ the masks) on `device`."""
        def move(x):
            if isinstance(x, list):
                return [move(t) for t in x]
            return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x

        views = {k: move(v) for k, v in prepared.items()}
        if "images" in views:
            views.update(self._crops(views.pop("images"), step_seed(self.seed, step, self.rank), device))
        views.setdefault("local_crops", None)
        return views

    def __call__(self, images: torch.Tensor, step: int, rank: int) -> dict[str, Any]:
        """Both halves at once on the images' device: uint8 [B,3,S,S] → the views."""
        self.rank = rank
        host = self.crops_on_host
        self.crops_on_host = False
        try:
            return self.finish(self.prepare(images, step), step, images.device)
        finally:
            self.crops_on_host = host


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target ← m·target + (1−m)·source = lerp(target, source, 1−m), one fused pass over the
    parameters (local shards under FSDP)."""
    def local(p):
        return p.to_local() if hasattr(p, "to_local") else p

    t = [local(p) for p in target.parameters()]
    s = [local(p).detach() for p in source.parameters()]
    torch._foreach_lerp_(t, s, 1.0 - momentum)


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

    def loss(self, net: nn.Module, v: dict[str, Any], s: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            t = self.teacher(v["global_crops"], patch_index=v["mask_indices"])
            cls_logits = torch.cat(t["g_cls_logits"].chunk(2)[::-1])  # student crop i ↔ teacher crop 1-i
            cls_p = self.losses.teacher_cls_probs(cls_logits, s["teacher_temp"])
            patch_t = self.losses.teacher_patch_targets(t, s["teacher_temp"], v["n_masked_patches"])
        out = net(v["global_crops"], v["local_crops"], masks=v["masks"], patch_index=v["mask_indices"])
        n_local = self.cfg.crops.n_local if v["local_crops"] is not None else 0
        return self.losses.student_terms(out, cls_p, patch_t, n_local=n_local, n_global=v["masks"].shape[0],
                                         masks_weight=v["masks_weight"])

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
