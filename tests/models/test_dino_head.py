"""DINOHead: structure, weight-normalised prototypes, official state-dict naming."""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from dinoflow.config import HeadConfig
from dinoflow.models import DINOHead, convert_official_head_state_dict, heads_from_config


def official_style_head(in_dim, out_dim, hidden, bottleneck):
    """A head built the official way (torch.nn.utils.weight_norm) to produce the official naming."""
    mlp = nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        last = torch.nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
    module = nn.Module()
    module.mlp, module.last_layer = mlp, last
    return module


def test_structure_and_output_shape():
    head = DINOHead(32, 100, hidden_dim=48, bottleneck_dim=16)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert head(torch.randn(5, 32)).shape == (5, 100)
    assert head(torch.randn(2, 7, 32)).shape == (2, 7, 100)  # patch tokens
    assert isinstance(DINOHead(32, 10, nlayers=1, bottleneck_dim=16).mlp, nn.Linear)
    bn = DINOHead(32, 10, nlayers=2, hidden_dim=24, bottleneck_dim=16, use_bn=True)
    assert [type(m).__name__ for m in bn.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear"]


def test_last_layer_norm_starts_at_one_and_can_be_frozen():
    torch.manual_seed(0)
    head = DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16, train_last_layer_norm=False)
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(64))
    assert head.last_layer.weight_g.shape == (64, 1) and not head.last_layer.weight_g.requires_grad
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(8, 32)).logsumexp(-1).sum().backward()
    assert head.last_layer.weight_v.grad is not None and head.mlp[0].weight.grad is not None
    opt.step()
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(64))
    trainable = DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16)  # the DINOv2 default
    torch.testing.assert_close(trainable.last_layer.weight.norm(dim=1), torch.ones(64))
    assert trainable.last_layer.weight_g.requires_grad
    opt = torch.optim.SGD(trainable.parameters(), lr=1.0)
    trainable(torch.randn(8, 32)).logsumexp(-1).sum().backward()
    opt.step()
    assert (trainable.last_layer.weight.norm(dim=1) - 1).abs().max() > 1e-3  # the scale moved


def test_init_matches_official():
    torch.manual_seed(0)
    head = DINOHead(384, 1000)
    for m in head.mlp:
        if isinstance(m, nn.Linear):
            assert abs(m.weight.std().item() - 0.02) < 0.001 and m.bias.abs().max() == 0
    v = head.last_layer.weight_v  # default nn.Linear init: U(-1/sqrt(in), 1/sqrt(in))
    assert v.abs().max() <= 1 / 256**0.5 and v.std() > 0.5 / 256**0.5 / 3**0.5


def test_forward_is_the_formula():
    torch.manual_seed(0)
    head = DINOHead(16, 20, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(4, 16)
    h = head.mlp(x)
    z = h / h.norm(dim=-1, keepdim=True)
    w = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ w.T)


def test_loads_official_naming_and_matches_its_output():
    torch.manual_seed(1)
    official = official_style_head(16, 30, 24, 8)
    with torch.no_grad():
        official.last_layer.weight_g.uniform_(0.5, 2.0)  # a trained g, not just ones
    sd = official.state_dict()
    assert {"mlp.0.weight", "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v"} <= set(sd)
    head = DINOHead(16, 30, hidden_dim=24, bottleneck_dim=8)
    head.load_state_dict(sd, strict=True)
    x = torch.randn(5, 16)
    want = official.last_layer(F.normalize(official.mlp(x), dim=-1, eps=1e-12))
    torch.testing.assert_close(head(x), want)
    assert set(head.state_dict()) == set(sd)


def test_loads_parametrization_naming():
    lin = torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 30, bias=False))
    sd = {f"last_layer.{k}": v for k, v in lin.state_dict().items()}
    head = DINOHead(16, 30, hidden_dim=24, bottleneck_dim=8)
    full = {**{k: v for k, v in head.state_dict().items() if k.startswith("mlp.")}, **sd}
    assert "last_layer.parametrizations.weight.original0" in full
    converted = convert_official_head_state_dict(full)
    assert "last_layer.weight_g" in converted and "last_layer.weight_v" in converted
    head.load_state_dict(full, strict=True)  # the load hook renames too
    torch.testing.assert_close(head.last_layer.weight, lin.weight.detach())


def test_from_config():
    cfg = HeadConfig(out_dim=100, hidden_dim=40, bottleneck_dim=12, nlayers=2, ibot_out_dim=50)
    head = DINOHead.from_config(32, cfg)
    assert head(torch.randn(2, 32)).shape == (2, 100)
    assert len(head.mlp) == 3 and head.mlp[-1].out_features == 12
    assert DINOHead.from_config(32, cfg, out_dim=cfg.ibot_out_dim)(torch.randn(2, 32)).shape == (2, 50)


def test_from_config_honours_every_head_setting():
    cfg = HeadConfig(out_dim=20, hidden_dim=16, bottleneck_dim=8, nlayers=2, use_bn=True, train_last_layer_norm=False)
    head = DINOHead.from_config(32, cfg)
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.mlp.modules())
    assert not head.last_layer.weight_g.requires_grad
    plain = DINOHead.from_config(32, cfg.model_copy(update={"use_bn": False, "train_last_layer_norm": True}))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.mlp.modules())
    assert plain.last_layer.weight_g.requires_grad


def test_heads_from_config_builds_the_ibot_head_only_when_separate():
    shared = HeadConfig(out_dim=20, hidden_dim=16, bottleneck_dim=8, ibot_out_dim=30, separate_ibot_head=False)
    dino, ibot = heads_from_config(32, shared)
    assert ibot is None and dino(torch.randn(3, 32)).shape == (3, 20)
    dino, ibot = heads_from_config(32, shared.model_copy(update={"separate_ibot_head": True, "use_bn": True}))
    assert ibot(torch.randn(3, 32)).shape == (3, 30)
    assert any(isinstance(m, nn.BatchNorm1d) for m in ibot.mlp.modules())


def test_zero_bottleneck_gives_zero_scores_not_nan():
    head = DINOHead(8, 10, nlayers=1, bottleneck_dim=4)
    head.mlp.weight.data.zero_()
    head.mlp.bias.data.zero_()
    out = head(torch.randn(2, 8))
    assert torch.equal(out, torch.zeros(2, 10))
