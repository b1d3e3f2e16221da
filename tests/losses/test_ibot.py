"""iBOTPatchLoss against direct computations: per-image weighting, dense vs gathered forms, centre."""

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


def test_dense_forward_matches_formula():
    masks, s, t = _batch(0)
    assert masks["masks"].any(1).sum() == 3 and not masks["masks"].all(1).any()
    loss = iBOTPatchLoss(12)(s, t, masks["masks"])
    assert math.isclose(float(loss), _reference_loss(s, t, masks["masks"], 0.1), rel_tol=1e-5)


def test_gathered_forward_equals_dense_forward_with_and_without_weights_and_padding():
    masks, s, t = _batch(1)
    idx = masks["mask_indices_list"]
    s_m, t_m = s.flatten(0, 1)[idx], t.flatten(0, 1)[idx]
    fn = iBOTPatchLoss(12)
    dense = fn(s, t, masks["masks"])
    assert torch.allclose(fn.forward_masked(s_m, t_m, masks["masks"]), dense, atol=1e-6)
    # padded buffers (as sized by `upperbound`): rows past n_masked_patches are ignored
    m = int(masks["n_masked_patches"])
    pad = masks["upperbound"] - m
    assert pad >= 0
    s_pad = torch.cat([s_m, 1e3 * torch.ones(pad + 1, 12)])
    t_pad = torch.cat([t_m, torch.ones(pad + 1, 12)])
    out = fn.forward_masked(s_pad, t_pad, masks["masks"], n_masked_patches=m, masks_weight=masks["masks_weight"])
    assert torch.allclose(out, dense, atol=1e-6)


def test_each_image_counts_equally_whatever_its_mask_size():
    k = 5
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 0] = True
    masks[1] = True  # 1 masked token vs 4 masked tokens
    s = torch.zeros(2, 4, k)
    t = torch.full((2, 4, k), 1.0 / k)
    # uniform student and teacher: every token's cross-entropy is log K, every image's mean too
    assert math.isclose(float(iBOTPatchLoss(k)(s, t, masks)), math.log(k), rel_tol=1e-6)


def test_weight_count_mismatch_is_explained():
    masks, s, t = _batch(2)
    fn = iBOTPatchLoss(12)
    with pytest.raises(ValueError, match="n_masked_patches"):
        fn.forward_masked(torch.randn(100, 12), torch.rand(100, 12), masks["masks"], masks_weight=masks["masks_weight"])


def test_gradcheck_and_descent_direction():
    g = torch.Generator().manual_seed(3)
    masks = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    s = torch.randn(3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(3, 3, 4, generator=g, dtype=torch.float64), -1)
    fn = iBOTPatchLoss(4)
    assert torch.autograd.gradcheck(lambda x: fn(x, t, masks), (s,))
    s_m = s.flatten(0, 1)[masks.flatten()].detach().requires_grad_(True)
    t_m = t.flatten(0, 1)[masks.flatten()]
    assert torch.autograd.gradcheck(lambda x: fn.forward_masked(x, t_m, masks), (s_m,))
    loss = fn.forward_masked(s_m, t_m, masks)
    (grad,) = torch.autograd.grad(loss, s_m)
    with torch.no_grad():
        assert fn.forward_masked(s_m - 0.1 * grad, t_m, masks) < loss


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
    assert float(fn.forward_masked(empty, empty, masks)) == 0.0


def test_gathered_form_compiles_without_graph_breaks_or_host_reads():
    """Regression: `ce[:n_masked_patches]` with a tensor count read the device value (a host sync
    on a GPU) and broke a compiled graph. The count of real rows now comes from a shape."""
    masks, s, t = _batch(7)
    idx = masks["mask_indices_list"]
    fn = iBOTPatchLoss(12)
    args = (
        s.flatten(0, 1)[idx],
        t.flatten(0, 1)[idx],
        masks["masks"],
        masks["n_masked_patches"],
        masks["masks_weight"],
    )
    torch._dynamo.reset()
    compiled = torch.compile(fn.forward_masked, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), fn.forward_masked(*args))
