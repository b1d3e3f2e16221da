"""Packed crops, per-block compilation and activation checkpointing keep the backbone's numbers."""

import pytest
import torch

from dinoflow.models import build_backbone


def _model(drop_path=0.0, **kw):
    torch.manual_seed(0)
    return build_backbone("vit_pico", patch_size=7, img_size=28, layerscale_init=0.5, drop_path_rate=drop_path, **kw)


def _crops(seed=1):
    g = torch.Generator().manual_seed(seed)
    glob, loc = torch.randn(4, 3, 28, 28, generator=g), torch.randn(6, 3, 14, 14, generator=g)
    masks = torch.rand(4, 16, generator=g) < 0.3
    return [glob, loc], [masks, None]


def _run(model, pack, seed=5):
    """Forward (seeded: stochastic depth) and backward; returns outputs and parameter gradients."""
    model.pack_crops = pack
    model.zero_grad(set_to_none=True)
    xs, ms = _crops()
    torch.manual_seed(seed)
    outs = model.forward_features_list(xs, ms)
    loss = sum((o["x_norm_clstoken"] ** 2).sum() + o["x_norm_patchtokens"].sum() for o in outs)
    loss.backward()
    flat = {
        f"{i}/{k}": o[k].detach()
        for i, o in enumerate(outs)
        for k in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm")
    }
    return flat, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("drop_path", [0.0, 0.05, 0.4])  # none, Bernoulli masks, the subset fast path
def test_packed_pass_equals_one_pass_per_crop_size(drop_path):
    model = _model(drop_path).train()
    out_a, grad_a = _run(model, pack=False)
    out_b, grad_b = _run(model, pack=True)
    assert out_a.keys() == out_b.keys() and grad_a.keys() == grad_b.keys() and len(grad_a) > 20
    for k in out_a:
        torch.testing.assert_close(out_b[k], out_a[k], rtol=1e-5, atol=1e-5, msg=k)
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_stochastic_depth_really_acts_in_both_paths():
    model = _model(0.4).train()
    out_a, _ = _run(model, pack=True, seed=5)
    out_b, _ = _run(model, pack=True, seed=6)
    assert not torch.allclose(out_a["0/x_prenorm"], out_b["0/x_prenorm"])


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_keeps_gradients_and_saves_memory(mode):
    model = _model(0.4).train()
    out_a, grad_a = _run(model, pack=True)

    def held_bytes():
        from torch.profiler import ProfilerActivity, profile

        xs, ms = _crops()
        torch.manual_seed(5)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            outs = model.forward_features_list(xs, ms)
        del outs
        return sum(e.self_cpu_memory_usage for e in prof.events())

    plain = held_bytes()
    model.set_activation_checkpointing(mode)
    out_b, grad_b = _run(model, pack=True)
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-4, atol=1e-5, msg=k)
    kept = held_bytes()
    assert kept < (0.8 if mode == "selective" else 0.3) * plain, (mode, kept, plain)


def test_blocks_compile_without_graph_breaks():
    """Each block compiles as one graph (fullgraph=True raises on a break), packed or not,
    with stochastic depth and selective checkpointing, forward and backward."""
    model = _model(0.4).train()
    ref_out, ref_grad = _run(model, pack=True)
    torch._dynamo.reset()
    for blk in model.block_list():
        blk.compile(fullgraph=True, backend="aot_eager", dynamic=False)
    out, grad = _run(model, pack=True)
    for k in ref_grad:
        torch.testing.assert_close(grad[k], ref_grad[k], rtol=1e-4, atol=1e-5, msg=k)
    _run(model, pack=False)
    model.set_activation_checkpointing("selective")
    _run(model, pack=True)
    with torch.no_grad():
        model.eval().forward_features(_crops()[0][0])


@pytest.mark.parametrize("pack", [True, False])
def test_last_block_computes_only_the_kept_tokens_with_the_same_numbers(pack):
    """forward_kept: CLS tokens and the chosen patch tokens equal the full forward's, and so do
    the gradients; the last block's projection and MLP see only those rows."""
    model = _model(0.0, num_register_tokens=2).train()
    model.pack_crops = pack
    xs, ms = _crops()
    keep = [
        torch.tensor([3, 0, 17, 40, 63]),
        torch.zeros(0, dtype=torch.long),
    ]  # 4 × 16 global patches, locals: CLS only

    def run(prune):
        model.prune_last_block = prune
        model.zero_grad(set_to_none=True)
        seen = []
        hook = model.block_list()[-1].mlp.register_forward_hook(
            lambda m, a, o: seen.append(a[0].numel() // a[0].shape[-1])
        )
        outs = model.forward_kept(xs, ms, keep)
        hook.remove()
        loss = sum((o["x_norm_clstoken"] ** 2).sum() + o["x_norm_patchtokens_kept"].sin().sum() for o in outs)
        loss.backward()
        return outs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(seen)

    full, grad_full, rows_full = run(False)
    kept, grad_kept, rows_kept = run(True)
    assert rows_kept == 4 + 6 + 5 and rows_full > 100
    for a, b in zip(full, kept):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert kept[0]["x_norm_patchtokens_kept"].shape == (5, 64) and kept[1]["x_norm_patchtokens_kept"].shape == (0, 64)
    for k in grad_full:
        torch.testing.assert_close(grad_kept[k], grad_full[k], rtol=1e-4, atol=1e-6, msg=k)
