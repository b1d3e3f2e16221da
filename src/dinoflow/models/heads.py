"""DINO / iBOT projection head: MLP → bottleneck → L2-normalise → weight-normalised prototypes.

The last layer keeps the official parameter names `last_layer.weight_g` [K, 1] and
`last_layer.weight_v` [K, bottleneck], so official head state dicts load unchanged. It is an
explicit (g, v) pair rather than `torch.nn.utils.parametrizations.weight_norm`, whose state
dict would be named `parametrizations.weight.original0/1`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinoflow.config import HeadConfig
from dinoflow.config.model_size import FLOAT_BYTES, head_params
from dinoflow.memory import refuse_over_memory


def _row_norm(v: Tensor) -> Tensor:
    """‖v‖ per row [K, 1], accumulated and returned in fp32 even for bf16 weights."""
    return torch.linalg.vector_norm(v, dim=1, keepdim=True, dtype=torch.promote_types(v.dtype, torch.float32))


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight = g · v / ‖v‖ (row-wise): each output row has norm |g|."""

    def __init__(self, in_features: int, out_features: int, train_norm: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        # g starts at 1 (unit-norm prototypes); frozen unless `train_norm`.
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=train_norm)

    @property
    def weight(self) -> Tensor:
        """[out, in]: g · v / ‖v‖ row by row (the norm in fp32 even for bf16 weights)."""
        return self.weight_v * (self.weight_g / _row_norm(self.weight_v)).to(self.weight_v.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in] → [N, out]."""
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _mlp(nlayers: int, in_dim: int, hidden_dim: int, bottleneck_dim: int, use_bn: bool, bias: bool) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    for a, b in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(a, b, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(b))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """[*, in_dim] → prototype scores [*, out_dim].

    Linear(in, hidden) → GELU → (Linear(hidden, hidden) → GELU) × (nlayers − 2) → Linear(hidden,
    bottleneck); L2-normalise (eps 1e-12, 1e-6 in fp16); weight-normalised Linear(bottleneck,
    out_dim, no bias). Linear layers of the MLP start trunc-normal (std 0.02) with zero bias;
    the prototypes `weight_v` keep PyTorch's default Linear init (the official head does the same
    because its init runs before the last layer exists) and the norms `weight_g` start at 1.

    `train_last_layer_norm=True` (default) leaves `weight_g` trainable, as the official DINOv2
    head does; False keeps it at 1 for the whole run, as DINO's `norm_last_layer=True` does.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
        train_last_layer_norm: bool = True,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        n = head_params(in_dim, out_dim, hidden_dim, bottleneck_dim, nlayers)
        refuse_over_memory(
            f"a DINO head of {n:,} parameters (out_dim {out_dim}, hidden_dim {hidden_dim}, bottleneck_dim "
            f"{bottleneck_dim}, {nlayers} layers)",
            n * FLOAT_BYTES,
            "Lower the head's out_dim / hidden_dim / bottleneck_dim / nlayers.",
        )
        self.mlp = _mlp(nlayers, in_dim, hidden_dim, bottleneck_dim, use_bn, mlp_bias)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, train_norm=train_last_layer_norm)
        # Same distribution as nn.Linear's default (kaiming-uniform, a=sqrt(5)).
        nn.init.kaiming_uniform_(self.last_layer.weight_v, a=5**0.5)
        self._register_load_state_dict_pre_hook(_rename_parametrized_keys)

    @classmethod
    def from_config(cls, in_dim: int, cfg: HeadConfig, out_dim: int | None = None) -> "DINOHead":
        """A head from `HeadConfig` (out_dim defaults to `cfg.out_dim`; pass `cfg.ibot_out_dim` for iBOT)."""
        return cls(
            in_dim,
            out_dim if out_dim is not None else cfg.out_dim,
            use_bn=cfg.use_bn,
            nlayers=cfg.nlayers,
            hidden_dim=cfg.hidden_dim,
            bottleneck_dim=cfg.bottleneck_dim,
            train_last_layer_norm=cfg.train_last_layer_norm,
        )

    def forward(self, x: Tensor, parts: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """[*, in_dim] → prototype scores [*, out_dim]; with `parts`, the two factors of those
        scores instead: (normalised bottleneck features [*, bottleneck], prototypes [out_dim,
        bottleneck]), for losses that never hold all the scores at once (a chunked cross-entropy)."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        if parts:
            return x, self.last_layer.weight
        return self.last_layer(x)


def heads_from_config(in_dim: int, cfg: HeadConfig) -> tuple[DINOHead, DINOHead | None]:
    """The DINO head and, when `cfg.separate_ibot_head`, the iBOT head (else None: patch tokens
    share the DINO head); both map [*, in_dim] → [*, K] with K = out_dim / ibot_out_dim."""
    dino = DINOHead.from_config(in_dim, cfg)  # first: the random init draws in this order
    ibot = DINOHead.from_config(in_dim, cfg, out_dim=cfg.ibot_out_dim) if cfg.separate_ibot_head else None
    return dino, ibot


_PARAMETRIZATION_NAMES = {
    "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
    "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
}


def _rename_parametrized_keys(state_dict: dict, prefix: str, *args: Any) -> None:
    # Lets `head.load_state_dict` accept heads saved with the parametrizations-based weight_norm.
    for old, new in _PARAMETRIZATION_NAMES.items():
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


def convert_official_head_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Map head state-dict names from the official DINOv2 naming (or the newer
    `torch.nn.utils.parametrizations.weight_norm` naming) to DINOHead's.

    Accepts the head alone or inside a training checkpoint (`dino_head.` / `ibot_head.` prefixes
    are *not* stripped here; select the sub-dict first). DINOHead already uses the official names,
    so only the parametrization spelling changes.
    """
    return {_PARAMETRIZATION_NAMES.get(k, k): v for k, v in state_dict.items()}
