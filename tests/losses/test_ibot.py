"""iBOTPatchLoss, as the training step calls it, against direct computations: per-image weighting,
padding, the factor form, the centre."""

import math
import random

import pytest
import torch

from dinoflow.config import MaskConfig
from dinoflow.data.masking import collate_masks
from dinoflow.losses import iBOTPatchLoss


def _reference_loss(student, teacher, masks, student_temp):
    """-(1/B) sum_b (1/max(1, m_b)) sum_{n masked} sum_k t log softmax(s/τ), looping in float64."""
    b_images = masks.shape[0]
    total = 0.0
    for b in range(b_images):
        idx = masks[b].nonzero().flatten().tolist()
        acc = 0.0
        for n in idx:
            s = student[b, n].double() / student_temp
            log_p = s - torch.logsumexp(s, dim=0)
            acc += float((teacher[b, n].double() * log_p).sum())
        total += acc / max(1, len(idx))
    return -total / b_images


def _batch(seed: int, b_images=6, grid=4, k=12):
    g = torch.Generator().manual_seed(seed)
    n = grid * grid
    masks = collate_masks(b_images, grid, MaskConfig(mask_sample_probability=0.5), random.Random(seed))
    student = torch.randn(b_images, n, k, generator=g)
    teacher = torch.softmax(torch.randn(b_images, n, k, generator=g) / 0.1, dim=-1)
    return masks, student, teacher


def _gathered(masks, student, teacher):
    """The picked tokens in `mask_indices_list` order, as the training step holds them."""
    idx = masks["mask_indices_list"]
    return student.flatten(0, 1)[idx], teacher.flatten(0, 1)[idx]


def _weights(masks: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """1 / (masked tokens in the image) for each masked token, row-major."""
    per_image = 1.0 / masks.sum(-1).clamp(min=1).to(dtype)
    return per_image.unsqueeze(-1).expand_as(masks)[masks]


def test_masked_loss_matches_formula():
    masks, s, t = _batch(0)
    assert masks["masks"].any(1).sum() == 3 and not masks["masks"].all(1).any()
    s_m, t_m = _gathered(masks, s, t)
    loss = iBOTPatchLoss(12).masked_loss(s_m, t_m, masks["masks_weight"], n_images=6)
    assert loss.dtype == torch.float32
    assert math.isclose(float(loss), _reference_loss(s, t, masks["masks"], 0.1), rel_tol=1e-5)


def test_rows_past_the_weights_are_padding_and_ignored():
    masks, s, t = _batch(1)
    s_m, t_m = _gathered(masks, s, t)
    fn = iBOTPatchLoss(12)
    want = fn.masked_loss(s_m, t_m, masks["masks_weight"], 6)
    # padded buffers (as sized by `upperbound`): rows past the weights' count are ignored
    m = int(masks["n_masked_patches"])
    pad = masks["upperbound"] - m
    assert pad >= 0 and m == masks["masks_weight"].shape[0]
    s_pad = torch.cat([s_m, 1e3 * torch.ones(pad + 1, 12)])
    t_pad = torch.cat([t_m, torch.ones(pad + 1, 12)])
    assert torch.equal(fn.masked_loss(s_pad, t_pad, masks["masks_weight"], 6), want)
    assert math.isclose(float(want), _reference_loss(s, t, masks["masks"], 0.1), rel_tol=1e-5)


def test_each_image_counts_equally_whatever_its_mask_size():
    k = 5
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 0] = True
    masks[1] = True  # 1 masked token vs 4 masked tokens
    s = torch.zeros(5, k)
    t = torch.full((5, k), 1.0 / k)
    # uniform student and teacher: every token's cross-entropy is log K, every image's mean too
    loss = iBOTPatchLoss(k).masked_loss(s, t, _weights(masks), n_images=2)
    assert math.isclose(float(loss), math.log(k), rel_tol=1e-6)


def test_fewer_rows_than_weights_is_explained():
    masks, s, t = _batch(2)
    fn = iBOTPatchLoss(12)
    m = masks["masks_weight"].shape[0]
    with pytest.raises(ValueError, match="at least one row per weight"):
        fn.masked_loss(torch.randn(m - 1, 12), torch.rand(m, 12), masks["masks_weight"], 6)
    with pytest.raises(ValueError, match="one weight per picked token"):
        fn.masked_loss((torch.randn(m + 1, 4), torch.randn(12, 4)), lambda a, b: None, masks["masks_weight"], 6)


def test_gradcheck_and_descent_direction():
    g = torch.Generator().manual_seed(3)
    masks = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    s = torch.randn(3, 3, 4, generator=g, dtype=torch.float64)
    t = torch.softmax(torch.randn(3, 3, 4, generator=g, dtype=torch.float64), -1)
    fn = iBOTPatchLoss(4)
    s_m = s.flatten(0, 1)[masks.flatten()].requires_grad_(True)
    t_m = t.flatten(0, 1)[masks.flatten()]
    w = _weights(masks, torch.float64)
    assert torch.autograd.gradcheck(lambda x: fn.masked_loss(x, t_m, w, 3), (s_m,))
    loss = fn.masked_loss(s_m, t_m, w, 3)
    assert math.isclose(float(loss.detach()), _reference_loss(s, t, masks, 0.1), rel_tol=1e-9)
    (grad,) = torch.autograd.grad(loss, s_m)
    with torch.no_grad():
        assert fn.masked_loss(s_m - 0.1 * grad, t_m, w, 3) < loss


def test_factor_form_equals_logit_form():
    """Heads-mode distillation hands over the head's factors (z, w) instead of z @ wᵀ, and a
    function of the row range for the targets: the same loss and gradients."""
    g = torch.Generator().manual_seed(8)
    masks, _, _ = _batch(8)
    m = masks["masks_weight"].shape[0]
    z = torch.nn.functional.normalize(torch.randn(m, 6, generator=g), dim=-1).requires_grad_(True)
    w = torch.randn(12, 6, generator=g).requires_grad_(True)
    t = torch.softmax(torch.randn(m, 12, generator=g) / 0.1, -1)
    fn = iBOTPatchLoss(12)
    factor = fn.masked_loss((z, w), lambda a, b: t[a:b], masks["masks_weight"], 6)
    (gz, gw) = torch.autograd.grad(factor, (z, w))
    logit = fn.masked_loss(z @ w.t(), t, masks["masks_weight"], 6)
    (lz, lw) = torch.autograd.grad(logit, (z, w))
    assert math.isclose(float(factor.detach()), float(logit.detach()), rel_tol=1e-6)
    torch.testing.assert_close(gz, lz, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, lw, rtol=1e-4, atol=1e-6)


def test_softmax_center_keeps_shape_and_uses_centre():
    g = torch.Generator().manual_seed(4)
    fn = iBOTPatchLoss(7)
    fn.center.copy_(torch.randn(1, 1, 7, generator=g))
    tokens = torch.randn(10, 7, generator=g)
    out = fn.softmax_center_teacher(tokens, 0.05)
    assert out.shape == (10, 7)
    expected = torch.softmax((tokens.double() - fn.center.double().reshape(-1)) / 0.05, -1)
    assert torch.allclose(out.double(), expected, atol=1e-6)
    assert fn.softmax_center_teacher(tokens.reshape(2, 5, 7), 0.05).shape == (2, 5, 7)


def test_center_is_the_ema_of_the_mean_masked_teacher_token():
    g = torch.Generator().manual_seed(5)
    fn = iBOTPatchLoss(6, center_momentum=0.8)
    tokens = torch.randn(11, 6, generator=g)
    fn.update_center(tokens)
    assert torch.count_nonzero(fn.center) == 0  # applied lazily, like the official loss
    fn.apply_center_update()
    expected = 0.2 * tokens.double().mean(0)
    assert torch.allclose(fn.center.double().reshape(-1), expected, atol=1e-6)
    # the official call passes the masked tokens as [1, M, K]: the same centre
    other = iBOTPatchLoss(6, center_momentum=0.8)
    other.update_center(tokens.unsqueeze(0))
    other.apply_center_update()
    assert torch.allclose(other.center, fn.center, atol=1e-7)


def test_center_from_dense_tokens_averages_per_image_means():
    g = torch.Generator().manual_seed(6)
    fn = iBOTPatchLoss(3, center_momentum=0.5)
    tokens = torch.randn(4, 9, 3, generator=g)
    fn.update_center(tokens)
    fn.apply_center_update()
    expected = 0.5 * torch.stack([tokens[b].double().mean(0) for b in range(4)]).mean(0)
    assert torch.allclose(fn.center.double().reshape(-1), expected, atol=1e-6)


def test_empty_mask_step_leaves_centre_unchanged():
    fn = iBOTPatchLoss(3)
    fn.center.fill_(0.5)
    fn.update_center(torch.zeros(0, 3))
    fn.apply_center_update()
    assert torch.equal(fn.center, torch.full((1, 1, 3), 0.5))


def test_a_batch_without_masked_tokens_gives_empty_targets_and_zero_loss():
    fn = iBOTPatchLoss(5)
    masks = torch.zeros(3, 4, dtype=torch.bool)
    empty = torch.zeros(0, 5)
    assert fn.sinkhorn_knopp_teacher(empty, 0.07, torch.tensor([0])).shape == (0, 5)
    assert fn.softmax_center_teacher(empty, 0.07).shape == (0, 5)
    assert float(fn.masked_loss(empty, empty, _weights(masks), 3)) == 0.0


def test_masked_loss_compiles_without_graph_breaks_or_host_reads():
    """Regression: `ce[:n_masked_patches]` with a tensor count read the device value (a host sync
    on a GPU) and broke a compiled graph. The count of real rows comes from the weights' shape."""
    masks, s, t = _batch(7)
    s_m, t_m = _gathered(masks, s, t)
    fn = iBOTPatchLoss(12)
    args = (s_m, t_m, masks["masks_weight"], 6)
    torch._dynamo.reset()
    compiled = torch.compile(fn.masked_loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), fn.masked_loss(*args))


@pytest.mark.parametrize("centering", ["softmax", "sinkhorn_knopp"])
def test_factor_targets_equal_the_materialised_targets(centering):
    """The targets heads-mode distillation recomputes from the teacher's factors, chunk by chunk,
    are those of the materialised logits, and the centre update is the same."""
    g = torch.Generator().manual_seed(9)
    z, w = torch.randn(10, 6, generator=g), torch.randn(7, 6, generator=g)
    a, b = iBOTPatchLoss(7), iBOTPatchLoss(7)
    dense = a.teacher_targets(z @ w.t(), 0.07, centering, n_masked_patches=torch.tensor([10]))
    rows = b.teacher_targets((z, w), 0.07, centering, n_masked_patches=torch.tensor([10]))
    torch.testing.assert_close(torch.cat([rows(0, 4), rows(4, 10)]), dense, rtol=1e-5, atol=1e-6)
    a.apply_center_update()
    b.apply_center_update()
    torch.testing.assert_close(a.center, b.center, rtol=1e-5, atol=1e-6)
