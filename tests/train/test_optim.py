import pytest
import torch
from torch import nn

from dinoflow.config import OptimConfig
from dinoflow.train.optim import apply_schedules, build_optimizer, layer_id, param_groups


class TinyViT(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, 4, 2, 2)
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"norm1": nn.LayerNorm(4), "fc": nn.Linear(4, 4)}) for _ in range(depth)]
        )
        for b in self.blocks:
            b.ls1 = nn.Module()
            b.ls1.gamma = nn.Parameter(torch.ones(4))
        self.norm = nn.LayerNorm(4)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Linear(4, 4)
        self.last_layer = nn.Linear(4, 8, bias=False)


def _groups(cfg):
    return param_groups({"backbone": TinyViT(), "dino_head": Head()}, cfg, {"backbone": 3})


def _find(groups, name):
    for g in groups:
        if name in g["names"]:
            return g
    raise KeyError(name)


def test_layer_ids():
    assert layer_id("pos_embed", 12) == 0
    assert layer_id("patch_embed.proj.weight", 12) == 0
    assert layer_id("blocks.0.attn.qkv.weight", 12) == 1
    assert layer_id("blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("norm.weight", 12) == 13


def test_layerwise_decay_patch_embed_and_no_decay():
    cfg = OptimConfig(layerwise_decay=0.5, patch_embed_lr_mult=0.2)
    g = _groups(cfg)
    assert _find(g, "backbone.blocks.2.fc.weight")["lr_multiplier"] == pytest.approx(0.5)  # 0.5^(4-3)
    assert _find(g, "backbone.blocks.0.fc.weight")["lr_multiplier"] == pytest.approx(0.125)  # 0.5^(4-1)
    assert _find(g, "backbone.cls_token")["lr_multiplier"] == pytest.approx(0.5**4)
    assert _find(g, "backbone.patch_embed.proj.weight")["lr_multiplier"] == pytest.approx(0.5**4 * 0.2)
    assert _find(g, "backbone.norm.weight")["lr_multiplier"] == pytest.approx(1.0)
    assert _find(g, "dino_head.mlp.weight")["lr_multiplier"] == pytest.approx(1.0)
    for n in ("backbone.blocks.1.fc.bias", "backbone.blocks.1.norm1.weight", "backbone.blocks.1.ls1.gamma"):
        assert _find(g, n)["wd_multiplier"] == 0.0
    assert _find(g, "backbone.blocks.1.fc.weight")["wd_multiplier"] == 1.0
    assert _find(g, "backbone.pos_embed")["wd_multiplier"] == 1.0
    assert _find(g, "dino_head.last_layer.weight")["is_last_layer"]


def test_apply_schedules_sets_every_group():
    cfg = OptimConfig(layerwise_decay=0.5)
    groups = _groups(cfg)
    opt = build_optimizer(groups, cfg)
    apply_schedules(opt, lr=1.0, wd=0.1, last_layer_lr=0.0)
    for g in opt.param_groups:
        expect = 0.0 if g["is_last_layer"] else g["lr_multiplier"]
        assert g["lr"] == pytest.approx(expect)
        assert g["weight_decay"] == pytest.approx(0.1 * g["wd_multiplier"])
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(TinyViT().parameters())) + len(list(Head().parameters()))


@pytest.mark.parametrize("trainable", [True, False])
def test_prototype_norm_follows_config_and_freezes_with_the_last_layer(trainable):
    from dinoflow.config import HeadConfig
    from dinoflow.models import heads_from_config

    dino, _ = heads_from_config(
        16, HeadConfig(out_dim=8, hidden_dim=12, bottleneck_dim=6, train_last_layer_norm=trainable)
    )
    assert dino.last_layer.weight_g.requires_grad is trainable
    groups = param_groups({"dino_head": dino}, OptimConfig(), {})
    names = [n for g in groups for n in g["names"]]
    assert ("dino_head.last_layer.weight_g" in names) is trainable
    if trainable:  # official: in the last-layer group (zero LR while frozen), weight-decayed
        g = _find(groups, "dino_head.last_layer.weight_g")
        assert g["is_last_layer"] and g["wd_multiplier"] == 1.0
        opt = build_optimizer(groups, OptimConfig())
        apply_schedules(opt, lr=1.0, wd=0.0, last_layer_lr=0.0)
        before = dino.last_layer.weight_g.detach().clone()
        dino(torch.randn(4, 16)).logsumexp(-1).sum().backward()
        opt.step()
        torch.testing.assert_close(dino.last_layer.weight_g.detach(), before)  # frozen epochs leave it alone


def test_chunked_block_names_give_the_block_index_not_the_chunk():
    """Regression: with block_chunks the names are blocks.<chunk>.<i>.*; the chunk index was read
    as the layer id, so every block of a chunk got the same (wrong) learning rate."""
    from dinoflow.models import build_backbone

    assert layer_id("blocks.1.6.attn.qkv.weight", 12) == 7
    assert layer_id("blocks.0.0.norm1.weight", 12) == 1
    cfg = OptimConfig(layerwise_decay=0.5)
    flat = build_backbone("vit_pico", patch_size=7, img_size=28)
    chunked = build_backbone("vit_pico", patch_size=7, img_size=28, block_chunks=3)

    def multipliers(model):
        return {
            n.split(".", 1)[1]
            .replace("blocks.0.0.", "blocks.0.")
            .replace("blocks.1.1.", "blocks.1.")
            .replace("blocks.2.2.", "blocks.2."): g["lr_multiplier"]
            for g in param_groups({"backbone": model}, cfg, {"backbone": 3})
            for n in g["names"]
        }

    want, got = multipliers(flat), multipliers(chunked)
    assert got == want and len(set(want.values())) == 6  # embeddings, patch embed, three blocks, final norm


def test_adamw_is_fused():
    model = nn.Linear(3, 3)
    opt = build_optimizer(param_groups({"head": model}, OptimConfig(), {}), OptimConfig())
    assert opt.defaults["fused"] is True
