"""k-NN: agreement with a per-sample re-statement of the official DINOv2 algorithm, by hand, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from dinoflow.evaluation.knn import iter_knn_scores, knn_accuracy, knn_classify

KS = (1, 3, 10, 20, 100, 200)


def reference_knn(train_x, train_y, test_x, ks, T, num_classes, tie_free: bool):
    """One test sample at a time, plain Python where possible.

    With `tie_free` the neighbours are ordered by Python's sort (valid when no two similarities
    tie); otherwise by `torch.topk` on that one row, the primitive the official code calls.
    """
    train_n = train_x / train_x.norm(dim=1, keepdim=True)
    preds = {k: [] for k in ks}
    top5 = {k: [] for k in ks}
    max_k = min(max(ks), len(train_x))
    for q in test_x:
        q = q / q.norm()
        sims = train_n @ q
        if tie_free:
            order = sorted(range(len(sims)), key=lambda i: -float(sims[i]))[:max_k]
        else:
            order = sims.topk(max_k, largest=True, sorted=True).indices.tolist()
        top = sims[order]
        w = torch.exp(top / T - (top / T).max())
        w = w / w.sum()
        for k in ks:
            scores = [0.0] * num_classes
            for j in range(min(k, max_k)):
                scores[int(train_y[order[j]])] += float(w[j])
            best = max(range(num_classes), key=lambda c: (scores[c], -c))  # first class on a tie
            preds[k].append(best)
            # Classes without votes tie at 0; topk (as torchmetrics' top-k accuracy) orders them.
            top5[k].append(torch.tensor(scores, dtype=torch.float32).topk(min(5, num_classes)).indices.tolist())
    return preds, top5


def test_matches_reference_on_random_features():
    g = torch.Generator().manual_seed(0)
    train_x = torch.randn(500, 16, generator=g)
    train_y = torch.randint(0, 7, (500,), generator=g)
    test_x = torch.randn(123, 16, generator=g)
    for T in (0.07, 0.5):
        ours = knn_classify(train_x, train_y, test_x, ks=KS, temperature=T, batch_size=50)
        ref, _ = reference_knn(train_x.double(), train_y, test_x.double(), KS, T, 7, tie_free=True)
        for k in KS:
            assert ours[k].tolist() == ref[k], f"k={k} T={T}"


def test_matches_reference_with_tied_similarities():
    # Features are signed basis vectors: every similarity is exactly -1, 0 or 1 whatever the
    # summation order, so the ties are real and topk's tie order decides the neighbours.
    g = torch.Generator().manual_seed(1)
    d = 6

    def signed_basis(n):
        x = torch.zeros(n, d)
        x[torch.arange(n), torch.randint(0, d, (n,), generator=g)] = torch.randint(0, 2, (n,), generator=g) * 2.0 - 1
        return x * torch.rand(n, 1, generator=g).add(0.5)  # scale does not matter after normalising

    train_x, test_x = signed_basis(300), signed_basis(80)
    train_y = torch.randint(0, 5, (300,), generator=g)
    ours = knn_classify(train_x, train_y, test_x, ks=KS, temperature=0.07, batch_size=17)
    ref, _ = reference_knn(train_x, train_y, test_x, KS, 0.07, 5, tie_free=False)
    n_tied_rows = sum(
        int((train_x / train_x.norm(dim=1, keepdim=True) @ (q / q.norm()) == 1).sum() > 1) for q in test_x
    )
    assert n_tied_rows > 40  # the data really is full of ties
    for k in KS:
        assert ours[k].tolist() == ref[k], f"k={k}"


def test_batch_size_does_not_change_predictions():
    g = torch.Generator().manual_seed(2)
    train_x, test_x = torch.randn(400, 8, generator=g), torch.randn(100, 8, generator=g)
    train_y = torch.randint(0, 10, (400,), generator=g)
    a = knn_classify(train_x, train_y, test_x, ks=KS, batch_size=7)
    b = knn_classify(train_x, train_y, test_x, ks=KS, batch_size=1000)
    assert all(torch.equal(a[k], b[k]) for k in KS)


def test_hand_computed_example():
    # Test point (1, 0); train: (1,0) class 0, (1,1)/√2 class 1, (0,1) class 1.
    # Similarities 1, 0.7071, 0. With T = 1: weights ∝ e^1, e^0.7071, e^0.
    train_x = torch.tensor([[0.0, 3.0], [1.0, 0.0], [2.0, 2.0]])  # unnormalised on purpose
    train_y = torch.tensor([1, 0, 1])
    test_x = torch.tensor([[5.0, 0.0]])
    e1, e2, e3 = math.e, math.exp(math.sqrt(0.5)), 1.0
    z = e1 + e2 + e3
    scores = next(iter_knn_scores(train_x, train_y, test_x, ks=(1, 2, 3), temperature=1.0))
    # One softmax over max(k) = 3 neighbours, partial sums for smaller k.
    torch.testing.assert_close(scores[1][0], torch.tensor([e1 / z, 0.0]))
    torch.testing.assert_close(scores[2][0], torch.tensor([e1 / z, e2 / z]))
    torch.testing.assert_close(scores[3][0], torch.tensor([e1 / z, (e2 + e3) / z]))
    preds = knn_classify(train_x, train_y, test_x, ks=(1, 2, 3), temperature=1.0)
    assert {k: int(v[0]) for k, v in preds.items()} == {1: 0, 2: 0, 3: 1}  # 2.718 < 2.028 + 1
    # A sharp temperature lets the nearest neighbour outvote the two others.
    assert int(knn_classify(train_x, train_y, test_x, ks=(3,), temperature=0.07)[3][0]) == 0


def test_accuracy_counts_top1_and_top5():
    g = torch.Generator().manual_seed(3)
    train_x = torch.randn(300, 12, generator=g)
    train_y = torch.randint(0, 8, (300,), generator=g)
    test_x = torch.randn(90, 12, generator=g)
    test_y = torch.randint(0, 8, (90,), generator=g)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, ks=(10, 20), batch_size=32)
    ref1, ref5 = reference_knn(train_x.double(), train_y, test_x.double(), (10, 20), 0.07, 8, tie_free=True)
    for k in (10, 20):
        assert acc[k]["top1"] == pytest.approx(sum(p == t for p, t in zip(ref1[k], test_y.tolist())) / 90)
        assert acc[k]["top5"] == pytest.approx(sum(t in p for p, t in zip(ref5[k], test_y.tolist())) / 90)
        assert acc[k]["top5"] >= acc[k]["top1"]


def test_separable_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(4)
    centres = torch.eye(4) * 10
    train_y = torch.arange(4).repeat(25)
    test_y = torch.arange(4).repeat(5)
    train_x = centres[train_y] + torch.randn(100, 4, generator=g)
    test_x = centres[test_y] + torch.randn(20, 4, generator=g)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, ks=(10, 20))
    assert acc[10]["top1"] == 1.0 and acc[20]["top1"] == 1.0


def test_k_larger_than_train_set_is_clipped_with_a_warning():
    train_x = torch.randn(15, 4)
    train_y = torch.arange(15) % 3
    test_x = torch.randn(5, 4)
    with pytest.warns(UserWarning, match="clipped"):
        preds = knn_classify(train_x, train_y, test_x, ks=(10, 200))
    same = knn_classify(train_x, train_y, test_x, ks=(15,))  # k = N: nothing to clip
    assert torch.equal(preds[200], same[15])
    with pytest.warns(UserWarning):
        acc = knn_accuracy(train_x, train_y, test_x, torch.zeros(5, dtype=torch.long), ks=(10, 200))
    assert acc[200]["k_used"] == 15 and acc[10]["k_used"] == 10


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="width"):
        knn_classify(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), torch.randn(2, 3))
    with pytest.raises(ValueError, match="train_labels"):
        knn_classify(torch.randn(5, 4), torch.zeros(4, dtype=torch.long), torch.randn(2, 4))
    with pytest.raises(ValueError, match="ks"):
        knn_classify(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), torch.randn(2, 4), ks=(0,))


def test_matches_the_vectorised_official_formulation():
    # KnnModule.forward restated: one-hot(neighbour labels) * softmax(top sims / T), summed over the first k.
    g = torch.Generator().manual_seed(5)
    train_x, test_x = torch.randn(1000, 32, generator=g), torch.randn(300, 32, generator=g)
    train_y = torch.randint(0, 10, (1000,), generator=g)
    tr = torch.nn.functional.normalize(train_x, dim=1)
    te = torch.nn.functional.normalize(test_x, dim=1)
    sims, idx = (te @ tr.T).topk(200, dim=1, largest=True, sorted=True)
    votes = torch.nn.functional.one_hot(train_y[idx], 10) * torch.softmax(sims / 0.07, 1)[:, :, None]
    ours = knn_classify(train_x, train_y, test_x, ks=(10, 20, 100, 200), batch_size=300)
    for k in (10, 20, 100, 200):
        assert torch.equal(ours[k], votes[:, :k].sum(1).argmax(1)), f"k={k}"
