"""Weighted k-NN classification on frozen features — the DINOv2 protocol.

The algorithm (facebookresearch/dinov2 `dinov2/eval/knn.py`, `KnnModule.forward`), per test sample:

1. L2-normalise train and test features; similarity = cosine = dot product.
2. Take the `max(ks)` most similar train samples with `torch.topk(largest=True, sorted=True)`.
3. Weights = softmax(top similarities / T) over those `max(ks)` neighbours (ONE softmax over
   max(k), not one per k; argmax and top-5 are unaffected by that positive rescaling, the
   class scores are not).
4. For each k, class score = sum of the weights of the first k neighbours with that label.
5. Prediction = argmax of the scores (the first class on a tie, as `torch.argmax`);
   top-5 = `torch.topk(scores, 5)` (what torchmetrics' `MulticlassAccuracy(top_k=5)` does), so
   classes without a vote, all tied at 0, are ordered by topk exactly as in the official run.

Ties between equal similarities are broken exactly as the official code breaks them, because
the same call (`torch.topk` over the full train set, per test row) picks the neighbours; that
choice is independent of how many test rows are batched together. Test rows are processed in
batches of `batch_size` (the official evaluation batch is 256), which also keeps the
similarity matmul bit-identical to the official single-process run.

Differences from the official code, on purpose: k larger than the train set is clipped to the
train set (the official code crashes in `topk`), and the class scores are accumulated one
neighbour at a time (`scatter_add_`) instead of materialising a [B, k, C] one-hot tensor.
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def _check_inputs(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"k-NN features must be 2-D [N, D]; got train {tuple(train_features.shape)}, test {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_features.shape[1]} vs {test_features.shape[1]}"
        )
    if train_labels.ndim != 1 or len(train_labels) != len(train_features):
        raise ValueError(f"train_labels must be [N={len(train_features)}]; got {tuple(train_labels.shape)}")
    if len(train_features) == 0:
        raise ValueError("k-NN needs at least one train sample")
    if train_labels.min() < 0:
        raise ValueError("k-NN labels must be non-negative class indices")


def effective_ks(ks: Sequence[int], n_train: int) -> dict[int, int]:
    """Map each requested k to the k actually used (clipped to the train-set size)."""
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers; got {list(ks)}")
    out = {int(k): min(int(k), n_train) for k in ks}
    clipped = {k: v for k, v in out.items() if v != k}
    if clipped:
        msg = f"k-NN: k > number of train samples ({n_train}); clipped {clipped}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    return out


def iter_knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield, per batch of test rows, {k: class scores [B, C] (float32)}.

    train_features [N, D], train_labels [N] int, test_features [M, D]; features need not be
    normalised (they are L2-normalised here, as `ModelWithNormalize` does in the official code).
    """
    _check_inputs(train_features, train_labels, test_features)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    k_eff = effective_ks(ks, len(train_features))
    max_k = max(k_eff.values())
    train_labels = train_labels.long()
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    train_t = F.normalize(train_features.float(), dim=1, p=2).T.contiguous()  # [D, N]
    test_n = F.normalize(test_features.float(), dim=1, p=2)
    # Report the scores of k after accumulating neighbour number k (1-based).
    wanted: dict[int, list[int]] = {}
    for k, ke in k_eff.items():
        wanted.setdefault(ke, []).append(k)
    for start in range(0, len(test_n), batch_size):
        sims = test_n[start : start + batch_size] @ train_t  # [B, N]
        top_sims, idx = sims.topk(max_k, dim=1, largest=True, sorted=True)
        weights = torch.softmax(top_sims / temperature, dim=1)  # one softmax over max_k
        labels = train_labels[idx]  # [B, max_k]
        scores = torch.zeros(len(sims), num_classes, dtype=weights.dtype)
        out: dict[int, torch.Tensor] = {}
        for j in range(max_k):
            scores.scatter_add_(1, labels[:, j : j + 1], weights[:, j : j + 1])
            for k in wanted.get(j + 1, ()):
                out[k] = scores.clone()
        yield {k: out[k] for k in ks}


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> dict[int, torch.Tensor]:
    """Official DINOv2 weighted k-NN: {k: predicted labels [M] (int64)} for every requested k.

    train_features [N, D], train_labels [N], test_features [M, D]. k > N uses all N neighbours
    (a warning says so). See the module docstring for the exact algorithm and tie handling.
    """
    preds: dict[int, list[torch.Tensor]] = {int(k): [] for k in ks}
    for batch in iter_knn_scores(train_features, train_labels, test_features, ks, temperature, num_classes, batch_size):
        for k, s in batch.items():
            preds[k].append(s.argmax(dim=1))
    return {k: torch.cat(v) if v else torch.empty(0, dtype=torch.long) for k, v in preds.items()}


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> dict[int, dict[str, float]]:
    """{k: {"top1", "top5", "k_used"}}: accuracies as fractions in [0, 1] over the M test samples.

    "k_used" is k clipped to the train-set size. Top-5 uses min(5, C) classes (with fewer than
    five classes it is 1.0 by definition).
    """
    test_labels = test_labels.long()
    if len(test_labels) != len(test_features):
        raise ValueError(f"test_labels must be [M={len(test_features)}]; got {tuple(test_labels.shape)}")
    if len(test_labels) == 0:
        raise ValueError("k-NN accuracy needs at least one test sample")
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    hits1 = {int(k): 0 for k in ks}
    hits5 = {int(k): 0 for k in ks}
    start = 0
    for batch in iter_knn_scores(train_features, train_labels, test_features, ks, temperature, num_classes, batch_size):
        b = next(iter(batch.values())).shape[0]
        target = test_labels[start : start + b]
        for k, s in batch.items():
            hits1[k] += int((s.argmax(dim=1) == target).sum())
            top = s.topk(min(5, s.shape[1]), dim=1).indices
            hits5[k] += int((top == target[:, None]).any(dim=1).sum())
        start += b
    m = len(test_labels)
    n = len(train_features)
    return {k: {"top1": hits1[k] / m, "top5": hits5[k] / m, "k_used": min(k, n)} for k in hits1}
