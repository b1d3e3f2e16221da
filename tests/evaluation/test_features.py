"""Feature extraction against the model's own forward_features."""

from __future__ import annotations

import numpy as np
import torch

from dinoflow.evaluation.features import extract_features, patch_tokens, pixel_features
from dinoflow.evaluation.transform import eval_transform
from dinoflow.models import build_backbone


def _model():
    torch.manual_seed(0)
    return build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=1.0)


def test_features_match_forward_features():
    m = _model()
    imgs = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    f = extract_features(
        m, imgs, np.arange(10), image_size=28, resize_ratio=1.0, batch_size=4, n_last_blocks=4, progress=False
    )
    assert f.blocks_cls.shape == (10, 3, 64)  # n_last_blocks clipped to the 3-block depth
    out = m.forward_features(eval_transform(torch.from_numpy(imgs), 28, 1.0))
    torch.testing.assert_close(f.cls, out["x_norm_clstoken"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.blocks_cls[:, -1], f.cls)
    torch.testing.assert_close(f.patch_mean, out["x_norm_patchtokens"].mean(1), atol=1e-5, rtol=1e-5)
    assert f.labels.tolist() == list(range(10))
    assert not torch.equal(f.blocks_cls[:, 0], f.blocks_cls[:, 1])


def test_patch_grid_and_pixels():
    m = _model()
    imgs = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    g = patch_tokens(m, imgs, image_size=28, resize_ratio=1.0)
    assert g.shape == (3, 4, 4, 64)
    out = m.forward_features(eval_transform(torch.from_numpy(imgs), 28, 1.0))["x_norm_patchtokens"]
    torch.testing.assert_close(g.reshape(3, 16, 64), out, atol=1e-5, rtol=1e-5)
    p = pixel_features(imgs, np.zeros(3), image_size=28, resize_ratio=1.0, progress=False)
    torch.testing.assert_close(p.cls, torch.from_numpy(imgs).reshape(3, -1).float() / 255)
    assert p.patch_mean is None and p.blocks_cls.shape == (3, 1, 784)
