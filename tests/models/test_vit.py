"""The ViT forward pass against independent computations of the official semantics."""

import math

import pytest
import torch
import torch.nn.functional as F

from dinoflow.config import ModelConfig
from dinoflow.errors import DinoflowError
from dinoflow.models import backbone_from_config, build_backbone, load_backbone_weights


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (LayerScale, norms, mask token), so every term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name.endswith("gamma") or "norm" in name else 0.2
            base = (
                1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight" else 0.0
            )
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
    return model


def pico(**kw):
    kw.setdefault("patch_size", 7)
    kw.setdefault("img_size", 28)
    kw.setdefault("layerscale_init", 1.0)
    return randomize(build_backbone("vit_pico", **kw)).eval()


def images(b, h, w, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- independent reference


def ref_pos_embed(pos_embed, h, w, patch, offset, antialias):
    """The official interpolation rule written directly with F.interpolate."""
    n = pos_embed.shape[1] - 1
    gh, gw = h // patch, w // patch
    if gh * gw == n and h == w:
        return pos_embed
    m = int(math.sqrt(n))
    grid = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if offset:
        grid = F.interpolate(
            grid, scale_factor=((gh + offset) / m, (gw + offset) / m), mode="bicubic", antialias=antialias
        )
    else:
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=antialias)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
    return torch.cat([pos_embed[:, :1].float(), patch_pos], 1).to(pos_embed.dtype)


def ref_forward(model, x, masks=None):
    """Explicit math for the whole backbone (no module calls): returns prenorm and normed tokens."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    p, heads, r = model.patch_size, model.num_heads, model.num_register_tokens
    b, _, h, w = x.shape
    conv = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    tok = conv.permute(0, 2, 3, 1).reshape(b, -1, conv.shape[1])
    if masks is not None:
        tok = tok.clone()
        tok[masks] = sd["mask_token"][0]
    tok = torch.cat([sd["cls_token"].expand(b, 1, -1), tok], 1)
    tok = tok + ref_pos_embed(sd["pos_embed"], h, w, p, model.interpolate_offset, model.interpolate_antialias)
    if r:
        tok = torch.cat([tok[:, :1], sd["register_tokens"].expand(b, r, -1), tok[:, 1:]], 1)
    d = tok.shape[-1]
    hd = d // heads
    for i in range(model.n_blocks):
        k = f"blocks.{i}."
        y = F.layer_norm(tok, (d,), sd[k + "norm1.weight"], sd[k + "norm1.bias"], eps=1e-6)
        qkv = y @ sd[k + "attn.qkv.weight"].T + sd[k + "attn.qkv.bias"]
        q, kk, v = (qkv[..., j * d : (j + 1) * d].reshape(b, -1, heads, hd).transpose(1, 2) for j in range(3))
        att = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, -1, d)
        o = o @ sd[k + "attn.proj.weight"].T + sd[k + "attn.proj.bias"]
        tok = tok + sd[k + "ls1.gamma"] * o
        y = F.layer_norm(tok, (d,), sd[k + "norm2.weight"], sd[k + "norm2.bias"], eps=1e-6)
        if k + "mlp.w12.weight" in sd:
            a = y @ sd[k + "mlp.w12.weight"].T + sd[k + "mlp.w12.bias"]
            hid = a.shape[-1] // 2
            f = (F.silu(a[..., :hid]) * a[..., hid:]) @ sd[k + "mlp.w3.weight"].T + sd[k + "mlp.w3.bias"]
        else:
            a = F.gelu(y @ sd[k + "mlp.fc1.weight"].T + sd[k + "mlp.fc1.bias"])
            f = a @ sd[k + "mlp.fc2.weight"].T + sd[k + "mlp.fc2.bias"]
        tok = tok + sd[k + "ls2.gamma"] * f
    normed = F.layer_norm(tok, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return tok, normed


@pytest.mark.parametrize(
    "kw,size",
    [
        ({}, (28, 28)),  # stored grid: no interpolation
        ({}, (35, 21)),  # non-square, offset-0.1 scale-factor branch
        ({"num_register_tokens": 3, "interpolate_offset": 0.0, "interpolate_antialias": True}, (42, 28)),
        ({"num_register_tokens": 2, "ffn_layer": "swiglu"}, (14, 49)),
    ],
)
def test_forward_features_matches_reference(kw, size):
    # float64 on both sides: any difference is a semantic one, not rounding.
    model = pico(**kw).double()
    x = images(2, *size).double()
    masks = torch.rand(2, (size[0] // 7) * (size[1] // 7), generator=torch.Generator().manual_seed(3)) < 0.4
    for m in (None, masks):
        out = model.forward_features(x, masks=m)
        prenorm, normed = ref_forward(model, x, m)
        r = model.num_register_tokens
        tol = dict(atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(out["x_prenorm"], prenorm, **tol)
        torch.testing.assert_close(out["x_norm_clstoken"], normed[:, 0], **tol)
        torch.testing.assert_close(out["x_norm_regtokens"], normed[:, 1 : 1 + r], **tol)
        torch.testing.assert_close(out["x_norm_patchtokens"], normed[:, 1 + r :], **tol)
        assert out["masks"] is m


def test_output_shapes_for_several_sizes():
    model = pico(num_register_tokens=4)
    for h, w in [(28, 28), (14, 14), (56, 28), (7, 63)]:
        out = model.forward_features(images(3, h, w))
        n = (h // 7) * (w // 7)
        assert out["x_norm_clstoken"].shape == (3, 64)
        assert out["x_norm_regtokens"].shape == (3, 4, 64)
        assert out["x_norm_patchtokens"].shape == (3, n, 64)
        assert out["x_prenorm"].shape == (3, 1 + 4 + n, 64)
    no_reg = pico().forward_features(images(2, 28, 28))
    assert no_reg["x_norm_regtokens"].shape == (2, 0, 64)


def test_forward_returns_cls_or_the_dict():
    model = pico()
    x = images(2, 28, 28)
    cls = model(x)
    assert cls.shape == (2, 64)
    torch.testing.assert_close(cls, model.forward_features(x)["x_norm_clstoken"])
    assert set(model(x, is_training=True)) == {
        "x_norm_clstoken",
        "x_norm_regtokens",
        "x_norm_patchtokens",
        "x_prenorm",
        "masks",
    }


def test_mask_token_replaces_patch_embedding_before_pos_embed():
    model = pico(num_register_tokens=2)
    x = images(2, 28, 28)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5]] = True
    masks[1, 15] = True
    tok = model.prepare_tokens_with_masks(x, masks)
    plain = model.prepare_tokens_with_masks(x)
    pos = model.pos_embed[0, 1:]
    patches, plain_patches = tok[:, 3:], plain[:, 3:]
    torch.testing.assert_close(patches[masks], (model.mask_token + pos.expand(2, -1, -1)[masks]).detach())
    torch.testing.assert_close(patches[~masks], plain_patches[~masks])
    # Registers sit right after CLS and carry no positional embedding.
    torch.testing.assert_close(tok[:, 1:3], model.register_tokens.expand(2, -1, -1).detach())
    torch.testing.assert_close(tok[:, 0], (model.cls_token[0] + model.pos_embed[0, :1]).expand(2, -1).detach())
    with pytest.raises(DinoflowError, match="masks"):
        model.prepare_tokens_with_masks(x, masks[:, :8])


def test_pos_embed_early_return_only_for_square_stored_grid():
    model = pico()
    tok = torch.zeros(1, 17, 64)
    assert model.interpolate_pos_encoding(tok, 28, 28) is model.pos_embed
    # 2x8 patches = 16 tokens as well, but not square: the official code interpolates.
    out = model.interpolate_pos_encoding(tok, 14, 56)
    torch.testing.assert_close(out, ref_pos_embed(model.pos_embed.detach(), 14, 56, 7, 0.1, False))
    assert not torch.allclose(out, model.pos_embed)


@pytest.mark.parametrize("h,w", [(42, 42), (21, 35), (63, 14)])
def test_pos_embed_interpolation_branches(h, w):
    torch.manual_seed(0)
    plain = build_backbone("vit_pico", patch_size=7, img_size=35)  # 5x5 stored grid
    reg = build_backbone(
        "vit_pico", patch_size=7, img_size=35, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True
    )
    reg.pos_embed.data.copy_(plain.pos_embed.data)
    n = (h // 7) * (w // 7)
    tok = torch.zeros(1, 1 + n, 64)
    pe = plain.pos_embed.detach()
    g = pe[:, 1:].reshape(1, 5, 5, 64).permute(0, 3, 1, 2)
    by_scale = F.interpolate(g, scale_factor=((h // 7 + 0.1) / 5, (w // 7 + 0.1) / 5), mode="bicubic")
    by_size_aa = F.interpolate(g, size=(h // 7, w // 7), mode="bicubic", antialias=True)
    want_plain = torch.cat([pe[:, :1], by_scale.permute(0, 2, 3, 1).reshape(1, n, 64)], 1)
    want_reg = torch.cat([pe[:, :1], by_size_aa.permute(0, 2, 3, 1).reshape(1, n, 64)], 1)
    torch.testing.assert_close(plain.interpolate_pos_encoding(tok, h, w), want_plain, atol=0, rtol=0)
    torch.testing.assert_close(reg.interpolate_pos_encoding(tok, h, w), want_reg, atol=0, rtol=0)
    # The two conventions really differ, so using the wrong one would change hub features.
    assert (want_plain - want_reg).abs().max() > 1e-3


def test_pos_embed_is_interpolated_in_fp32_and_cast_back():
    model = pico().double()
    tok = torch.zeros(1, 1 + 36, 64, dtype=torch.float64)
    out = model.interpolate_pos_encoding(tok, 42, 42)
    assert out.dtype == torch.float64
    pe32 = model.pos_embed.detach().float()
    g = pe32[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    want = F.interpolate(g, scale_factor=(6.1 / 4, 6.1 / 4), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 36, 64)
    torch.testing.assert_close(out[:, 1:], want.double(), atol=0, rtol=0)


def test_get_intermediate_layers_semantics():
    model = pico(num_register_tokens=2)
    x = images(2, 35, 21)
    feats = model.forward_features(x)
    last = model.get_intermediate_layers(x, n=1)
    assert isinstance(last, tuple) and len(last) == 1
    torch.testing.assert_close(last[0], feats["x_norm_patchtokens"])
    # Collect every block's output by hand.
    tok = model.prepare_tokens_with_masks(x)
    per_block = []
    for blk in model.block_list():
        tok = blk(tok)
        per_block.append(tok)
    two = model.get_intermediate_layers(x, n=2, norm=False)
    torch.testing.assert_close(two[0], per_block[1][:, 3:])
    torch.testing.assert_close(two[1], per_block[2][:, 3:])
    picked = model.get_intermediate_layers(x, n=[2, 0], return_class_token=True)
    assert len(picked) == 2  # in block order, not list order
    torch.testing.assert_close(picked[0][0], model.norm(per_block[0])[:, 3:])
    torch.testing.assert_close(picked[0][1], model.norm(per_block[0])[:, 0])
    torch.testing.assert_close(picked[1][1], feats["x_norm_clstoken"])
    grid = model.get_intermediate_layers(x, n=1, reshape=True)[0]
    assert grid.shape == (2, 64, 5, 3)
    torch.testing.assert_close(grid[:, :, 1, 2], feats["x_norm_patchtokens"][:, 1 * 3 + 2])
    with pytest.raises(DinoflowError):
        model.get_intermediate_layers(x, n=4)
    with pytest.raises(DinoflowError):
        model.get_intermediate_layers(x, n=[0, 3])


def test_forward_features_list_equals_separate_calls():
    model = pico(num_register_tokens=1)
    xs = [images(2, 28, 28, seed=1), images(3, 14, 14, seed=2)]
    masks = [torch.rand(2, 16, generator=torch.Generator().manual_seed(0)) < 0.5, None]
    outs = model.forward_features_list(xs, masks)
    assert outs == outs and len(outs) == 2
    for out, x, m in zip(outs, xs, masks):
        single = model.forward_features(x, masks=m)
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(out[key], single[key])
        assert out["masks"] is m
    via_forward = model.forward_features(xs, masks)
    torch.testing.assert_close(via_forward[1]["x_prenorm"], outs[1]["x_prenorm"])


def test_eval_is_deterministic_and_batch_independent():
    model = pico()
    x = images(4, 28, 28)
    a, b = model(x), model(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(model(x[2:3]), a[2:3], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rate", [0.05, 0.5])
def test_drop_path_only_in_training(rate):
    model = pico(drop_path_rate=rate)
    x = images(8, 28, 28)
    torch.manual_seed(0)
    ref = model(x)
    assert torch.equal(model(x), ref)  # eval: drop path off
    model.train()
    outs = [model(x) for _ in range(4)]
    assert any(not torch.allclose(o, ref) for o in outs)  # stochastic in training
    model.eval()
    assert torch.equal(model(x), ref)


def test_non_uniform_drop_path_is_linear_in_depth():
    model = build_backbone("vit_pico", patch_size=7, img_size=28, drop_path_rate=0.4, drop_path_uniform=False)
    assert [b.drop_path_rate for b in model.block_list()] == pytest.approx([0.0, 0.2, 0.4])
    uniform = build_backbone("vit_pico", patch_size=7, img_size=28, drop_path_rate=0.4)
    assert [b.drop_path_rate for b in uniform.block_list()] == pytest.approx([0.4] * 3)


def test_gradients_reach_every_parameter():
    model = pico(num_register_tokens=2).train()
    x = images(2, 28, 28)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :4] = True
    out = model.forward_features(x, masks=masks)
    loss = out["x_norm_clstoken"].pow(2).sum() + out["x_norm_patchtokens"].pow(2).sum() + out["x_norm_regtokens"].sum()
    loss.backward()
    no_grad = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert no_grad == []


def test_block_chunks_use_the_official_chunked_names_and_same_outputs():
    flat = pico(num_register_tokens=1)
    chunked = build_backbone(
        "vit_pico", patch_size=7, img_size=28, layerscale_init=1.0, num_register_tokens=1, block_chunks=2
    ).eval()
    keys = chunked.state_dict().keys()
    # depth 3, chunk size 1 → chunks hold blocks 0 | 1 | 2 with Identity placeholders before them
    assert (
        "blocks.0.0.norm1.weight" in keys and "blocks.1.1.norm1.weight" in keys and "blocks.2.2.attn.qkv.weight" in keys
    )
    assert len(keys) == len(flat.state_dict())
    load_backbone_weights(chunked, flat.state_dict())
    x = images(2, 21, 35)
    torch.testing.assert_close(chunked.forward_features(x)["x_prenorm"], flat.forward_features(x)["x_prenorm"])
    torch.testing.assert_close(chunked.get_intermediate_layers(x, n=[1])[0], flat.get_intermediate_layers(x, n=[1])[0])


def test_init_follows_the_official_scheme():
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", patch_size=7, img_size=28)
    qkv = model.blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.002 and qkv.bias.abs().max() == 0
    assert model.cls_token.abs().max() < 1e-4 and model.mask_token.abs().max() == 0
    assert abs(model.pos_embed.std().item() - 0.02) < 0.003
    assert torch.all(model.blocks[3].ls2.gamma == 1e-5)
    assert not any(
        "ls1" in k for k in build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=None).state_dict()
    )


def test_backbone_from_config_and_bad_inputs():
    cfg = ModelConfig(arch="vit_mini", patch_size=7, img_size=28, num_register_tokens=2, layerscale_init=0.1)
    model = backbone_from_config(cfg)
    assert (model.embed_dim, model.n_blocks, model.num_register_tokens, model.patch_size) == (128, 4, 2, 7)
    assert model.config == cfg
    assert backbone_from_config(cfg, drop_path_rate=0.2).block_list()[0].drop_path_rate == 0.2
    with pytest.raises(DinoflowError, match="divisible by the patch size 7"):
        model(torch.zeros(1, 3, 30, 28))
    with pytest.raises(DinoflowError, match=r"\[B, C, H, W\]"):
        model(torch.zeros(3, 28, 28))
