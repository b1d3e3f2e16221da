import numpy as np
from PIL import Image

from dinoflow.curation.embed import PixelEmbedder, make_embedder
from dinoflow.curation.junk import junk_reason, lag1_autocorrelation


def _digit(seed=0) -> np.ndarray:
    from dinoflow.demo.sources import mnist_split

    return mnist_split(0)[0][seed]


def _img(a):
    return Image.fromarray(a.astype(np.uint8)).convert("RGB")


def test_pixel_embedder_unit_norm_and_shift_invariance():
    a = _digit(3)
    shifted = np.zeros_like(a)
    shifted[2:, 1:] = a[:-2, :-1]
    other = _digit(7)
    for align in ("center", "moments", "moments_xy"):
        e = PixelEmbedder(28, 0.0, align)
        x = e([_img(a), _img(shifted), _img(other)])
        assert x.shape == (3, 784) and x.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
        assert x[0] @ x[1] > 0.95  # alignment undoes most of the shift
        assert x[0] @ x[2] < x[0] @ x[1]
    raw = PixelEmbedder(28, 0.0, "none")([_img(a), _img(shifted)])
    assert raw[0] @ raw[1] < 0.9  # without alignment the same shift costs a lot


def test_moments_xy_undoes_crop_resize():
    a = _digit(5)
    crop = np.asarray(Image.fromarray(a).crop((2, 1, 27, 26)).resize((28, 28), Image.Resampling.BICUBIC))
    e = PixelEmbedder(28, 0.0, "moments_xy")
    x = e([_img(a), _img(crop)])
    assert x[0] @ x[1] > 0.97
    assert e.identity() != PixelEmbedder(28, 0.5, "moments_xy").identity()


def test_junk_guards():
    rng = np.random.default_rng(0)
    kw = dict(min_side=8, min_std=2.0, min_autocorr=0.25)
    assert junk_reason(_img(_digit(0)), **kw) is None
    assert junk_reason(_img(np.full((28, 28), 77)), **kw) == "near_constant"
    assert junk_reason(_img(rng.integers(0, 256, (28, 28))), **kw) == "noise"
    assert junk_reason(_img(_digit(0)[:5, :]), **kw) == "too_small"
    assert lag1_autocorrelation(np.full((4, 4), 3.0)) == 0.0
    assert lag1_autocorrelation(_digit(1).astype(float)) > 0.5


def test_backbone_embedder_from_exported_file(tmp_path):
    import torch

    from dinoflow.config import ModelConfig
    from dinoflow.models import backbone_from_config, export_backbone

    torch.manual_seed(0)
    mcfg = ModelConfig(arch="vit_pico", patch_size=7, img_size=28, layerscale_init=1.0)
    export_backbone(backbone_from_config(mcfg), tmp_path / "backbone.pth", mcfg)
    e = make_embedder(str(tmp_path / "backbone.pth"), size=28, batch_size=2)
    imgs = [_img(_digit(i)) for i in range(3)]
    x = e(imgs)
    assert x.shape == (3, e.dim) and e.dim == 64
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e(imgs[:1]), x[:1], atol=1e-5)  # batching does not change a row
    assert e.identity().startswith("backbone-")
