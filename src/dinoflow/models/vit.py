"""The DINOv2 vision transformer, parameter-compatible with the official hub backbones.

Token layout inside the network: [CLS, registers (R), patches (N)], so the patch tokens of
an H×W image start at index 1 + R and are ordered row-major over the (H/p)×(W/p) grid.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinoflow.config import ModelConfig
from dinoflow.config.model_size import FLOAT_BYTES, backbone_params, forward_bytes, patch_tokens, swiglu_hidden_dim
from dinoflow.errors import DinoflowError
from dinoflow.memory import refuse_over_memory
from dinoflow.models.checkpointing import MODES
from dinoflow.models.layers import Block, PatchEmbed
from dinoflow.models.packing import pack, unpack
from dinoflow.models.presets import arch_spec, hub_kwargs

NORM_EPS = 1e-6


class BlockChunk(nn.ModuleList):
    """One FSDP chunk of the official layout: Identity placeholders keep the global block index
    in the parameter name (`blocks.<chunk>.<global index>.*`)."""

    def forward(self, x: Tensor) -> Tensor:
        for blk in self:
            x = blk(x)
        return x


class DinoVisionTransformer(nn.Module):
    """ViT backbone with CLS, optional registers, a mask token and interpolated positional embeddings.

    Attributes used by the rest of dinoflow: `embed_dim`, `patch_size`, `num_register_tokens`,
    `n_blocks`, `num_heads`, `arch`, and `config` (the ModelConfig it was built from).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 14,
        img_size: int = 518,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        swiglu: bool = False,
        num_register_tokens: int = 0,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        block_chunks: int = 0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise DinoflowError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if num_register_tokens < 0:
            raise DinoflowError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        if block_chunks > depth:
            raise DinoflowError(f"block_chunks {block_chunks} exceeds the depth {depth}")
        self.embed_dim = self.num_features = embed_dim
        self.num_tokens = 1  # CLS; registers are counted separately, as in the official model
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.arch: str | None = None
        self.config: ModelConfig | None = None

        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

        if drop_path_uniform:
            rates = [float(drop_path_rate)] * depth
        else:
            rates = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0]
        hidden = swiglu_hidden_dim(embed_dim, mlp_ratio) if swiglu else int(embed_dim * mlp_ratio)
        blocks = [
            Block(
                embed_dim,
                num_heads,
                hidden,
                swiglu=swiglu,
                layerscale_init=layerscale_init,
                drop_path_rate=rates[i],
                norm_eps=NORM_EPS,
            )
            for i in range(depth)
        ]
        self.chunked_blocks = block_chunks > 0
        if self.chunked_blocks:
            size = depth // block_chunks
            self.blocks = nn.ModuleList(
                BlockChunk([*([nn.Identity()] * start), *blocks[start : start + size]])
                for start in range(0, depth, size)
            )
        else:
            self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=NORM_EPS)
        self.head = nn.Identity()
        # Pack the crop sizes of forward_features_list into one pass per block (same numbers;
        # see dinoflow.models.packing). Training turns it off with train.pack_crops=false.
        self.pack_crops = True
        # forward_kept: the last block computes only the outputs the caller uses (see there)
        self.prune_last_block = True
        self.init_weights()

    # ------------------------------------------------------------------ init

    def init_weights(self) -> None:
        """Official init: pos_embed trunc-normal 0.02, CLS/registers N(0, 1e-6), Linear trunc-normal 0.02
        with zero bias; the patch conv keeps PyTorch's default; the mask token stays zero."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def block_list(self) -> list[Block]:
        """The transformer blocks in order, whether or not they are stored in chunks."""
        if not self.chunked_blocks:
            return [cast(Block, blk) for blk in self.blocks]
        chunks = [cast(nn.ModuleList, chunk) for chunk in self.blocks]
        return [cast(Block, blk) for chunk in chunks for blk in chunk if not isinstance(blk, nn.Identity)]

    # ------------------------------------------------------------------ tokens

    def interpolate_pos_encoding(self, x: Tensor, h: int, w: int) -> Tensor:
        """Positional embeddings [1, 1+N, D] for an h×w image; `x` is [B, 1+N, D] (CLS + patches).

        Matches the official arithmetic: the stored grid is returned untouched only when the
        token count matches and the image is square; otherwise the M×M grid is resized
        bicubically in fp32, either by scale factor (n + offset)/M (offset ≠ 0, the historical
        non-register models) or to the size (h/p, w/p) (offset 0, register models), with
        `interpolate_antialias` passed through in both cases.
        """
        out_dtype = x.dtype
        n_patch = x.shape[1] - 1
        n_stored = self.pos_embed.shape[1] - 1
        if n_patch == n_stored and h == w:
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, 0], pos[:, 1:]
        dim = x.shape[-1]
        gh, gw = h // self.patch_size, w // self.patch_size
        m = int(math.sqrt(n_stored))
        if m * m != n_stored:
            raise DinoflowError(f"pos_embed holds {n_stored} patch positions, not a square grid")
        grid = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # (n + offset)/M rather than a size: the offset dodges a floor() rounding issue in old
            # PyTorch, and the scale factor (not the size) enters the bicubic source coordinates.
            scale = (float(gh + self.interpolate_offset) / m, float(gw + self.interpolate_offset) / m)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias)
        else:
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=self.interpolate_antialias)
        if tuple(grid.shape[-2:]) != (gh, gw):
            raise DinoflowError(
                f"positional-embedding interpolation produced a {tuple(grid.shape[-2:])} grid, expected {(gh, gw)}"
            )
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((cls_pos.unsqueeze(0), patch_pos), dim=1).to(out_dtype)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """[B, 3, H, W] (+ masks [B, N] bool) → tokens [B, 1 + R + N, D].

        Masked patch embeddings are replaced by the mask token before positional embeddings
        are added; registers go after CLS and get no positional embedding.
        """
        if x.ndim != 4:
            raise DinoflowError(f"expected images [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)
        if masks is not None:
            if masks.shape != tokens.shape[:2]:
                raise DinoflowError(
                    f"masks must be [B, N] = {tuple(tokens.shape[:2])} booleans (one per patch), got {tuple(masks.shape)}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens, h, w)
        if self.register_tokens is not None:
            tokens = torch.cat((tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]), dim=1)
        return tokens

    def set_activation_checkpointing(self, mode: str) -> None:
        """ "none", "selective" or "full" for every block (see dinoflow.models.checkpointing)."""
        if mode not in MODES:
            raise DinoflowError(f"activation checkpointing {mode!r} is not one of {MODES}")
        for blk in self.block_list():
            blk.checkpointing = mode

    def _outputs(self, x: Tensor, masks: Tensor | None, x_norm: Tensor | None = None) -> dict[str, Any]:
        x_norm = self.norm(x) if x_norm is None else x_norm
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    # ------------------------------------------------------------------ forward

    def forward_features(self, x: Tensor | list[Tensor], masks: Tensor | list | None = None) -> Any:
        """Images [B, 3, H, W] → dict: x_norm_clstoken [B, D], x_norm_regtokens [B, R, D],
        x_norm_patchtokens [B, N, D], x_prenorm [B, 1+R+N, D] (before the final norm), masks (as given).

        A list of image batches is forwarded with `forward_features_list`.
        """
        if isinstance(x, list):
            return self.forward_features_list(x, cast(list, masks) if masks is not None else [None] * len(x))
        mask = cast(Tensor | None, masks)
        h = self.prepare_tokens_with_masks(x, mask)
        for blk in self.block_list():
            h = blk(h)
        return self._outputs(h, mask)

    def forward_features_list(
        self, x_list: Sequence[Tensor], masks_list: Sequence[Tensor | None]
    ) -> list[dict[str, Any]]:
        """Several batches of different resolutions (e.g. global and local crops) → one dict each.

        Equivalent to the official nested-tensor path (attention never mixes sequences). With
        `pack_crops` the crop sizes share one pass per block (dinoflow.models.packing).
        """
        if len(x_list) != len(masks_list):
            raise DinoflowError(f"got {len(x_list)} image batches but {len(masks_list)} mask entries")
        xs = [self.prepare_tokens_with_masks(x, m) for x, m in zip(x_list, masks_list)]
        if not (self.pack_crops and len(xs) > 1):
            for blk in self.block_list():
                xs = [blk(x) for x in xs]
            return [self._outputs(x, m) for x, m in zip(xs, masks_list)]

        x, segments = pack(xs)
        for blk in self.block_list():
            x = blk(x, segments)
        return [
            self._outputs(p, m, pn) for p, pn, m in zip(unpack(x, segments), unpack(self.norm(x), segments), masks_list)
        ]

    def forward_kept(
        self, x_list: Sequence[Tensor], masks_list: Sequence[Tensor | None], keep: Sequence[Tensor | None]
    ) -> list[dict[str, Tensor]]:
        """For callers that use only some outputs (training): per crop set, the CLS tokens and the
        patch tokens at `keep[i]` (flat indices into that set's [B·N] patch tokens; None: all).

        Returns per set {"x_norm_clstoken": [B, D], "x_norm_patchtokens_kept": [M, D]} (rows in
        `keep` order). The last block then runs its output projection and MLP for those tokens
        only — every token still serves as key and value, so the numbers are those of the full
        forward. Off (`prune_last_block`) or with stochastic depth in the last block, the full
        forward runs and the tokens are gathered from it.
        """
        blocks = self.block_list()
        last = blocks[-1]
        if not self.prune_last_block or (last.training and last.drop_path_rate > 0):
            outs = (
                self.forward_features_list(x_list, masks_list)
                if len(x_list) > 1
                else [self.forward_features(x_list[0], masks=masks_list[0])]
            )
            return [
                {
                    "x_norm_clstoken": o["x_norm_clstoken"],
                    "x_norm_patchtokens_kept": o["x_norm_patchtokens"].flatten(0, 1)
                    if k is None
                    else o["x_norm_patchtokens"].flatten(0, 1)[k],
                }
                for o, k in zip(outs, keep)
            ]

        xs = [self.prepare_tokens_with_masks(x, m) for x, m in zip(x_list, masks_list)]
        if self.pack_crops or len(xs) == 1:
            x, segments = pack(xs)
            for blk in blocks[:-1]:
                x = blk(x, segments)
        else:
            for blk in blocks[:-1]:
                xs = [blk(t) for t in xs]
            x, segments = pack(xs)
        rows, sizes = self._kept_rows(segments, keep, x.device)
        x = self.norm(last(x, segments, rows=rows))
        parts = x.split([n for pair in sizes for n in pair])
        return [
            {"x_norm_clstoken": parts[2 * i], "x_norm_patchtokens_kept": parts[2 * i + 1]} for i in range(len(sizes))
        ]

    def _kept_rows(
        self, segments, keep: Sequence[Tensor | None], device: torch.device
    ) -> tuple[Tensor, list[tuple[int, int]]]:
        """Packed row indices [CLS of set 0, kept patches of set 0, CLS of set 1, ...] and the
        (CLS count, kept count) of each set."""
        rows, sizes, offset = [], [], 0
        for (b, n), k in zip(segments, keep):
            p = n - 1 - self.num_register_tokens
            idx = torch.arange(b * p, device=device) if k is None else k.to(device)
            rows += [
                offset + torch.arange(b, device=device) * n,
                offset + torch.div(idx, p, rounding_mode="floor") * n + 1 + self.num_register_tokens + idx % p,
            ]
            sizes.append((b, int(idx.shape[0])))
            offset += b * n
        return torch.cat(rows), sizes

    def forward(self, *args: Any, is_training: bool = False, **kwargs: Any) -> Any:
        """CLS features [B, D] (through the identity `head`), or the forward_features dict when is_training."""
        ret = self.forward_features(*args, **kwargs)
        if is_training:
            return ret
        return self.head(ret["x_norm_clstoken"])

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (int) or of the blocks at indices `n` (sequence).

        Each entry is the patch tokens [B, N, D] (registers and CLS removed), or [B, D, H/p, W/p]
        with `reshape`; with `return_class_token` each entry is a (patches, cls [B, D]) pair.
        `norm` applies the final LayerNorm to every taken output.
        """
        depth = self.n_blocks
        if isinstance(n, int):
            if not 1 <= n <= depth:
                raise DinoflowError(f"n={n}: the model has {depth} blocks; ask for 1..{depth} last blocks")
            take = set(range(depth - n, depth))
            n_wanted = n
        else:
            take = set(int(i) for i in n)
            n_wanted = len(list(n))
            bad = sorted(i for i in take if not 0 <= i < depth)
            if bad or len(take) != n_wanted:
                raise DinoflowError(f"block indices {list(n)} must be distinct and within 0..{depth - 1}")
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        for i, blk in enumerate(self.block_list()):
            tokens = blk(tokens)
            if i in take:
                outputs.append(tokens)
        assert len(outputs) == n_wanted
        if norm:
            outputs = [self.norm(o) for o in outputs]
        class_tokens = [o[:, 0] for o in outputs]
        outputs = [o[:, 1 + self.num_register_tokens :] for o in outputs]
        if reshape:
            b, _, h, w = x.shape
            p = self.patch_size
            outputs = [o.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2).contiguous() for o in outputs]
        if return_class_token:
            return tuple(zip(outputs, class_tokens))
        return tuple(outputs)


# ---------------------------------------------------------------------- builders


def build_backbone(
    arch: str,
    *,
    patch_size: int = 14,
    img_size: int = 518,
    num_register_tokens: int = 0,
    layerscale_init: float | None = 1e-5,
    drop_path_rate: float = 0.0,
    drop_path_uniform: bool = True,
    interpolate_antialias: bool = False,
    interpolate_offset: float = 0.1,
    ffn_layer: str | None = None,
    block_chunks: int = 0,
) -> DinoVisionTransformer:
    """Build a preset ViT. `ffn_layer` None/"auto" picks SwiGLU for vit_giant2 and an MLP otherwise.

    For an official hub architecture use `build_hub_backbone("dinov2_vits14_reg")`
    (img_size 518, LayerScale 1.0, and the register models' interpolation settings).
    """
    spec = arch_spec(arch)
    ffn = spec.ffn if ffn_layer in (None, "auto") else ffn_layer
    if ffn in ("swiglufused",):
        ffn = "swiglu"
    if ffn not in ("mlp", "swiglu"):
        raise DinoflowError(f"ffn_layer {ffn_layer!r} is not supported; use 'mlp', 'swiglu' or 'auto'")
    _refuse_unbuildable(arch, patch_size, img_size, num_register_tokens, ffn, layerscale_init is not None)
    # the same settings build the model and describe it (model.config, saved beside exports)
    shared: dict[str, Any] = dict(
        patch_size=patch_size,
        img_size=img_size,
        num_register_tokens=num_register_tokens,
        layerscale_init=layerscale_init,
        drop_path_rate=drop_path_rate,
        drop_path_uniform=drop_path_uniform,
        interpolate_antialias=interpolate_antialias,
        interpolate_offset=interpolate_offset,
        block_chunks=block_chunks,
    )
    model = DinoVisionTransformer(
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio,
        swiglu=ffn == "swiglu",
        **shared,
    )
    model.arch = arch
    layer: Literal["auto", "mlp", "swiglu"] = "auto" if ffn == spec.ffn else "swiglu" if ffn == "swiglu" else "mlp"
    model.config = ModelConfig(arch=arch, ffn_layer=layer, **shared)
    return model


def _refuse_unbuildable(arch: str, patch: int, img: int, registers: int, ffn: str, layerscale: bool) -> None:
    """Before allocating: its parameters and one image's forward must fit in the memory left."""
    n = backbone_params(arch, patch, img, registers, ffn, layerscale)
    refuse_over_memory(
        f"{arch} at img_size {img}, patch_size {patch} ({patch_tokens(img, patch):,} patches, {n:,} parameters)",
        n * FLOAT_BYTES + forward_bytes(arch, patch, img, registers),
        "Lower img_size (or raise patch_size) in the model's config, or choose a smaller arch.",
    )


def backbone_from_config(cfg: ModelConfig, **overrides: Any) -> DinoVisionTransformer:
    """Build the backbone a ModelConfig describes; keyword overrides win (e.g. drop_path_rate=0)."""
    kwargs = cfg.model_dump()
    kwargs.update(overrides)
    return build_backbone(kwargs.pop("arch"), **kwargs)


def build_hub_backbone(name: str, **overrides: Any) -> DinoVisionTransformer:
    """The architecture of an official torch.hub model, e.g. "dinov2_vits14" or "dinov2_vitg14_reg"."""
    kwargs = hub_kwargs(name)
    kwargs.update(overrides)
    return build_backbone(kwargs.pop("arch"), **kwargs)
