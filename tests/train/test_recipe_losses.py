"""The recipe's teacher targets honour `loss.sinkhorn_iterations` in every form they take."""

from __future__ import annotations

import pytest
import torch

from dinoflow.config import LossConfig
from dinoflow.train.recipe_losses import RecipeLosses

K = 24


def _targets(iterations: int) -> dict[str, torch.Tensor]:
    """Teacher CLS targets, materialised patch targets and factor-form patch targets."""
    g = torch.Generator().manual_seed(0)
    cls_logits = torch.randn(8, K, generator=g) * 3
    patch_logits = torch.randn(10, K, generator=g) * 3
    z, w = torch.randn(10, 6, generator=g), torch.randn(K, 6, generator=g)
    losses = RecipeLosses(LossConfig(sinkhorn_iterations=iterations), K, K, torch.device("cpu"))
    factor = losses.teacher_patch_targets({"patch_z": z, "patch_w": w}, 0.1, torch.tensor([10]))
    return {
        "cls": losses.teacher_cls_probs(cls_logits, 0.1).flatten(0, 1),
        "patch": losses.teacher_patch_targets({"patch_logits": patch_logits}, 0.1, torch.tensor([10])),
        "patch_factors": factor(0, 10),
    }


@pytest.mark.parametrize("form", ["cls", "patch", "patch_factors"])
def test_sinkhorn_iterations_changes_the_teacher_targets(form):
    one, three, many = _targets(1)[form], _targets(3)[form], _targets(50)[form]
    # every form's rows are distributions whatever the iteration count ...
    for q in (one, three, many):
        torch.testing.assert_close(q.sum(-1), torch.ones(q.shape[0]), atol=1e-5, rtol=0)
    # ... and more iterations bring the prototype marginals closer to uniform: the setting is read
    spread = [float(q.sum(0).std()) for q in (one, three, many)]
    assert spread[0] > spread[1] > spread[2]
    assert not torch.allclose(one, three)
