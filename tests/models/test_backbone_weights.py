"""Strict weight loading, export round trips and architecture inference."""

import hashlib

import pytest
import torch
import yaml

from dinoflow.config import ModelConfig
from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError
from dinoflow.models import (
    BackboneWeightsError,
    build_backbone,
    build_hub_backbone,
    export_backbone,
    infer_model_config,
    load_backbone,
    load_backbone_weights,
)


def small(**kw):
    kw.setdefault("patch_size", 7)
    kw.setdefault("img_size", 28)
    return build_backbone("vit_pico", **kw).eval()


def x_batch(h=28, w=28):
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))


def randomized(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_export_then_load_backbone_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="vit_pico",
        patch_size=7,
        img_size=28,
        num_register_tokens=2,
        layerscale_init=0.1,
        drop_path_rate=0.2,
        interpolate_offset=0.0,
        interpolate_antialias=True,
    )
    from dinoflow.models import backbone_from_config

    model = randomized(backbone_from_config(cfg)).eval()
    path = export_backbone(model, tmp_path / "teacher" / "backbone.pth")
    assert path == tmp_path / "teacher" / "backbone.pth"
    assert ModelConfig.model_validate(yaml.safe_load((path.parent / "config.yaml").read_text())) == cfg
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    loaded = load_backbone(path)
    assert not loaded.training and loaded.config == cfg
    for size in [(28, 28), (35, 21)]:
        x = x_batch(*size)
        a, b = model.forward_features(x), loaded.forward_features(x)
        for k in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            assert torch.equal(a[k], b[k])
    assert load_backbone(path.parent).config == cfg  # a directory works too
    assert load_backbone(path, interpolate_offset=0.1).interpolate_offset == 0.1


def test_export_from_chunked_model_writes_the_flat_official_layout(tmp_path):
    model = randomized(small(block_chunks=3, layerscale_init=1.0))
    path = export_backbone(model, tmp_path)
    sd = torch.load(path, weights_only=True)
    assert "blocks.2.attn.qkv.weight" in sd and not any(k.startswith("blocks.2.2.") for k in sd)
    loaded = load_backbone(path)  # config.yaml says block_chunks 3: loads back into chunks
    assert loaded.chunked_blocks
    torch.testing.assert_close(loaded(x_batch()), model(x_batch()), atol=0, rtol=0)


def test_state_dict_without_config_is_recognised(tmp_path):
    """An official-style file (no config.yaml): architecture inferred from shapes."""
    model = randomized(small(num_register_tokens=4, layerscale_init=1.0, ffn_layer="swiglu", img_size=35))
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    loaded = load_backbone(tmp_path / "weights.pth")
    cfg = loaded.config
    assert (cfg.arch, cfg.patch_size, cfg.img_size, cfg.num_register_tokens, cfg.ffn_layer) == (
        "vit_pico",
        7,
        35,
        4,
        "swiglu",
    )
    # the hub convention for register models
    assert (cfg.interpolate_offset, cfg.interpolate_antialias) == (0.0, True)
    model.interpolate_offset, model.interpolate_antialias = 0.0, True
    torch.testing.assert_close(loaded(x_batch(42, 21)), model(x_batch(42, 21)), atol=0, rtol=0)


def test_infer_hub_vits14_from_its_layout():
    with torch.device("meta"):
        sd = build_hub_backbone("dinov2_vits14").state_dict()
        sd_reg = build_hub_backbone("dinov2_vitg14_reg").state_dict()
    cfg = infer_model_config(sd)
    assert (cfg.arch, cfg.img_size, cfg.patch_size, cfg.num_register_tokens, cfg.interpolate_offset) == (
        "vit_small",
        518,
        14,
        0,
        0.1,
    )
    assert cfg.layerscale_init == 1.0 and cfg.ffn_layer == "mlp"
    g = infer_model_config(sd_reg)
    assert (g.arch, g.num_register_tokens, g.ffn_layer, g.interpolate_antialias) == ("vit_giant2", 4, "swiglu", True)


def test_training_checkpoint_with_chunks_heads_and_ddp_prefix_loads():
    src = randomized(small(layerscale_init=1.0))
    chunked_names = {}
    for k, v in src.state_dict().items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // 2}.{i}." + k.split(".", 2)[2]  # 2 chunks: blocks.<chunk>.<i>.*
        chunked_names[k] = v
    ckpt = {
        "teacher": {
            **{f"backbone.{k}": v for k, v in chunked_names.items()},
            "dino_head.mlp.0.weight": torch.zeros(4, 64),
            "ibot_head.last_layer.weight_g": torch.ones(4, 1),
        },
        "model": {"student.backbone.cls_token": torch.zeros(1, 1, 64)},
        "iteration": 10,
    }
    dst = small(layerscale_init=1.0)
    load_backbone_weights(dst, ckpt)
    torch.testing.assert_close(dst(x_batch()), src(x_batch()), atol=0, rtol=0)
    ddp = {f"module.{k}": v for k, v in src.state_dict().items()}
    load_backbone_weights(small(layerscale_init=1.0), ddp)


def test_missing_unexpected_and_mismatched_keys_fail_without_loading():
    src = small(layerscale_init=1.0).state_dict()
    dst = small(layerscale_init=1.0)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    bad = {k: torch.randn_like(v) for k, v in src.items()}
    del bad["blocks.1.attn.proj.bias"]
    bad["blocks.7.norm1.weight"] = torch.ones(64)
    bad["norm.weight"] = torch.ones(65)
    with pytest.raises(BackboneWeightsError) as err:
        load_backbone_weights(dst, bad)
    msg = str(err.value)
    assert "nothing was loaded" in msg
    assert "blocks.1.attn.proj.bias" in msg and "blocks.7.norm1.weight" in msg and "norm.weight: (65,) vs (64,)" in msg
    assert err.value.missing == ["blocks.1.attn.proj.bias"]
    assert err.value.unexpected == ["blocks.7.norm1.weight"]
    assert err.value.mismatched == [("norm.weight", (65,), (64,))]
    assert isinstance(err.value, DinoflowError)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed after a failed load"


def test_grid_and_register_mismatch_hints():
    src = small(img_size=35, num_register_tokens=4).state_dict()
    with pytest.raises(BackboneWeightsError, match=r"5x5 grid: build with img_size = 5 x patch_size") as err:
        load_backbone_weights(small(num_register_tokens=4), src)
    with pytest.raises(BackboneWeightsError, match="num_register_tokens") as err:
        load_backbone_weights(small(img_size=35), src)
    assert err.value.unexpected == ["register_tokens"]


def test_file_errors(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        load_backbone_weights(small(), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="could not be read"):
        load_backbone(tmp_path / "junk.pth")
    torch.save({"weights": small().state_dict()}, tmp_path / "odd.pth")
    with pytest.raises(BackboneWeightsError, match="no backbone state dict found"):
        load_backbone(tmp_path / "odd.pth")
    (tmp_path / "cfg").mkdir()
    torch.save(small().state_dict(), tmp_path / "cfg" / "backbone.pth")
    (tmp_path / "cfg" / "config.yaml").write_text("pretrain: {}\n")
    with pytest.raises(DinoflowError, match="not a ModelConfig"):
        load_backbone(tmp_path / "cfg")


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"cls_token": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(BackboneWeightsError, match="weights-only"):
        load_backbone_weights(small(), tmp_path / "evil.pth")


def test_export_refuses_a_config_that_does_not_describe_the_model(tmp_path):
    model = small()
    with pytest.raises(BackboneWeightsError, match="does not describe this model"):
        export_backbone(
            model, tmp_path / "b.pth", ModelConfig(arch="vit_pico", patch_size=7, img_size=28, num_register_tokens=1)
        )
    assert not (tmp_path / "b.pth").exists()


def test_a_damaged_export_is_refused_by_its_recorded_checksum(tmp_path):
    """A bit flipped in an exported backbone.pth loads as a silently different model without the
    record `export_backbone` writes beside it; with it, every reader refuses the file by name."""
    path = export_backbone(randomized(small()), tmp_path / "backbone.pth")
    side = tmp_path / "backbone.pth.sha256"
    assert side.read_text().split() == [hashlib.sha256(path.read_bytes()).hexdigest(), "backbone.pth"]
    assert load_backbone(tmp_path) is not None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a tensor byte: torch.load alone reads it without complaint
    path.write_bytes(bytes(data))
    with pytest.raises(BackboneWeightsError, match=rf"{path} does not match the sha256 recorded in {side}"):
        load_backbone(path)
    with pytest.raises(BackboneWeightsError, match="damaged or replaced"):
        load_backbone_weights(small(), path)
    side.write_text("not a digest\n")
    with pytest.raises(BackboneWeightsError, match=r"does not hold a sha256 \(64 hex digits\)"):
        load_backbone(path)
    side.unlink()  # a file replaced on purpose: the user removes the record
    load_backbone(path)


def test_an_export_without_a_record_still_loads(tmp_path):
    """Official hub files and exports from before the record have none: they load unchecked."""
    path = export_backbone(small(), tmp_path / "backbone.pth")
    (tmp_path / "backbone.pth.sha256").unlink()
    assert load_backbone(path).embed_dim == 64


def test_saving_equal_weights_twice_gives_equal_bytes(tmp_path):
    """Two exports of the same tensors are the same file (sha256, DVC's hash): nothing random, such as
    the temp file's name, ends up inside the archive."""
    torch.manual_seed(0)
    model = build_backbone("vit_pico", patch_size=7, img_size=28)
    a = export_backbone(model, tmp_path / "a")
    b = export_backbone(model, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "backbone.pth.sha256").read_text().split()[0] == file_sha256(b)
