"""Backbone weights: strict loading of official / training / dinoflow files, export, and rebuild.

What `load_backbone_weights` accepts (always read with `torch.load(weights_only=True)`):

* an official hub file (`dinov2_vits14_pretrain.pth`: a flat state dict);
* a dinoflow export (`backbone.pth`, the same flat layout);
* a training checkpoint: the first of the wrapper keys `teacher`, `model`, `state_dict`,
  `backbone` that holds a mapping is descended into (the teacher first, because DINOv2
  evaluates the teacher); inside it, when keys start with `backbone.`, only those are kept
  (the prefix removed) and the heads (`dino_head.*`, `ibot_head.*`) are ignored;
* any of those with DDP (`module.`) or torch.compile (`_orig_mod.`) path components, and with
  the official FSDP block chunking (`blocks.<chunk>.<i>.*` → `blocks.<i>.*`).

After that normalisation the file must match the model exactly: any missing key, unexpected key
or shape mismatch raises `BackboneWeightsError` listing all of them, and nothing is loaded.

`export_backbone` also writes `<file>.sha256` (the `sha256sum` format) once the file is complete;
`read_weights` checks a file against it when one lies beside it, so an export damaged on disk
(a flipped bit loads as a silently different model) is refused by name in every later stage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import Tensor, nn

from dinoflow.config import ModelConfig, save_config
from dinoflow.digest import file_sha256
from dinoflow.errors import DinoflowError
from dinoflow.io import atomic_path, atomic_write_text
from dinoflow.models.presets import arch_from_shape
from dinoflow.models.vit import DinoVisionTransformer, backbone_from_config
from dinoflow.models.wrappers import strip_wrapper_names, unwrap

WRAPPER_KEYS = ("teacher", "model", "state_dict", "backbone")
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
BACKBONE_FILE = "backbone.pth"
CONFIG_FILE = "config.yaml"
CHECKSUM_SUFFIX = ".sha256"
_MAX_LISTED = 25
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BackboneWeightsError(DinoflowError):
    """A weights file that does not fit the backbone; `missing`, `unexpected`, `mismatched` list why."""

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple, tuple]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


# ---------------------------------------------------------------------- reading


def read_weights(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True, map_location="cpu")` with user-facing errors."""
    p = Path(path)
    if p.is_dir():
        p = p / BACKBONE_FILE
    if not p.is_file():
        raise BackboneWeightsError(f"weights file {p} does not exist")
    verify_recorded_checksum(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means the same thing to the user
        raise BackboneWeightsError(
            f"{p} could not be read as a weights-only PyTorch file ({type(e).__name__}: {e}); "
            "it may be truncated, not a .pth file, or contain pickled objects other than tensors"
        ) from e


def checksum_path(path: str | Path) -> Path:
    """Where the sha256 of a weights file written by `export_backbone` is recorded."""
    p = Path(path)
    return p.with_name(p.name + CHECKSUM_SUFFIX)


def verify_recorded_checksum(path: Path) -> None:
    """Refuse `path` when `<path>.sha256` lies beside it and records another sha256."""
    side = checksum_path(path)
    if not side.is_file():
        return
    try:
        text = side.read_text(errors="replace")
    except OSError as e:
        raise BackboneWeightsError(f"{side} is unreadable ({e})") from None
    recorded = text.split()[0] if text.split() else ""
    if not _HEX64.fullmatch(recorded):
        raise BackboneWeightsError(
            f"{side} does not hold a sha256 (64 hex digits) of {path.name}; it was edited or damaged: "
            f"rerun the stage that wrote {path}, or delete {side} if you put another file there on purpose"
        )
    actual = file_sha256(path)
    if actual != recorded:
        raise BackboneWeightsError(
            f"{path} does not match the sha256 recorded in {side} when it was written ({actual[:12]}… vs "
            f"{recorded[:12]}…): the file was damaged or replaced since. Rerun the stage that wrote it (or "
            f"restore it from a copy); if you replaced it on purpose, delete {side}"
        )


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _flat_name(key: str) -> str:
    name = strip_wrapper_names(key)
    m = _CHUNKED.match(name)
    return f"blocks.{m.group(1)}.{m.group(2)}" if m else name


def flatten_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official flat names: drop DDP/compile path components and undo block chunking."""
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        name = _flat_name(k)
        if name in out:
            raise BackboneWeightsError(f"two entries map to the same parameter {name!r} (one of them is {k!r})")
        out[name] = v
    return out


def extract_backbone_state_dict(obj: Any) -> dict[str, Tensor]:
    """Find the backbone's tensors in a loaded file and return them under official flat names."""
    seen: list[str] = []
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                seen.append(key)
                obj = obj[key]
                break
        else:
            keys = sorted(map(str, obj.keys()))[:_MAX_LISTED]
            where = "/".join(seen) or "the top level"
            raise BackboneWeightsError(
                f"no backbone state dict found at {where} (keys: {keys}); expected a mapping of parameter "
                f"names to tensors, or one under one of the keys {list(WRAPPER_KEYS)}"
            )
    if not isinstance(obj, Mapping):
        raise BackboneWeightsError(f"expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items()}
    stripped = {k: v for k, v in sd.items() if any(c == "backbone" for c in k.split("."))}
    if stripped:
        # Training checkpoints carry heads next to the backbone; select the backbone part only.
        sd = {_after_component(k, "backbone"): v for k, v in stripped.items()}
    return flatten_state_dict(sd)


def _after_component(key: str, component: str) -> str:
    parts = key.split(".")
    return ".".join(parts[parts.index(component) + 1 :])


# ---------------------------------------------------------------------- strict load


def _model_names(model: nn.Module) -> dict[str, str]:
    """Flat official name → the model's own state-dict name (they differ only when chunked)."""
    return {_flat_name(k): k for k in model.state_dict().keys()}


def _hints(missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple, tuple]]) -> list[str]:
    hints = []
    names = set(missing) | set(unexpected)
    for name, got, want in mismatched:
        if name == "pos_embed" and len(got) == 3:
            grid = math.isqrt(got[1] - 1)
            hints.append(
                f"the file's positional embedding is a {grid}x{grid} grid: build with img_size = {grid} x patch_size "
                "(or use load_backbone(), which reads it from the file)"
            )
        if name == "patch_embed.proj.weight" and len(got) == 4 and got[-1] != want[-1]:
            hints.append(f"the file uses patch size {got[-1]}, the model {want[-1]}")
        if name == "register_tokens":
            hints.append(f"the file has {got[1]} register tokens; build with num_register_tokens={got[1]}")
    if "register_tokens" in names:
        hints.append("register tokens differ: set num_register_tokens to match the file (4 for the *_reg hub models)")
    if any(".mlp.w12." in n for n in names) and any(".mlp.fc1." in n for n in names):
        hints.append("FFN type differs (SwiGLU w12/w3 vs MLP fc1/fc2): set ffn_layer")
    if any(".ls1.gamma" in n for n in names):
        hints.append("LayerScale differs: the file has ls*.gamma exactly when layerscale_init is set")
    if any(n.startswith("blocks.") for n in names) and not mismatched:
        hints.append("block counts differ: check arch")
    return hints


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f" … and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}): " + ", ".join(shown) + more


def load_backbone_weights(model: nn.Module, path_or_state_dict: str | Path | Mapping[str, Any]) -> nn.Module:
    """Load weights into `model` strictly (all or nothing); returns `model`.

    Accepts a path (a file, or a directory holding backbone.pth) or an already loaded object; see
    the module docstring for the layouts understood. Raises BackboneWeightsError listing every
    missing, unexpected and shape-mismatched key.
    """
    target = unwrap(model)
    source = path_or_state_dict
    obj = read_weights(source) if isinstance(source, (str, Path)) else source
    sd = extract_backbone_state_dict(obj)
    names = _model_names(target)
    own = target.state_dict()
    missing = sorted(set(names) - set(sd))
    unexpected = sorted(set(sd) - set(names))
    mismatched = [
        (k, tuple(sd[k].shape), tuple(own[names[k]].shape))
        for k in sorted(set(sd) & set(names))
        if tuple(sd[k].shape) != tuple(own[names[k]].shape)
    ]
    if missing or unexpected or mismatched:
        where = f" from {source}" if isinstance(source, (str, Path)) else ""
        lines = [f"backbone weights{where} do not match the model; nothing was loaded"]
        if missing:
            lines.append(_listing("missing in the file", missing))
        if unexpected:
            lines.append(_listing("unexpected in the file", unexpected))
        if mismatched:
            lines.append(
                _listing(
                    "shape mismatches (file vs model)", [f"{k}: {tuple(g)} vs {tuple(w)}" for k, g, w in mismatched]
                )
            )
        lines += [f"  hint: {h}" for h in _hints(missing, unexpected, mismatched)]
        raise BackboneWeightsError("\n".join(lines), missing, unexpected, mismatched)
    target.load_state_dict({names[k]: v for k, v in sd.items()}, strict=True)
    return model


# ---------------------------------------------------------------------- export


def _export_state_dict(model: nn.Module) -> dict[str, Tensor]:
    out = {}
    for k, v in unwrap(model).state_dict().items():
        if hasattr(v, "full_tensor"):  # DTensor from FSDP2: gather the full parameter
            v = v.full_tensor()
        out[_flat_name(k)] = v.detach().to("cpu", copy=True).contiguous()
    return out


def _check_config_matches(sd: Mapping[str, Tensor], cfg: ModelConfig) -> None:
    with torch.device("meta"):
        ref = backbone_from_config(cfg)
    ref_sd = {_flat_name(k): tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if ref_sd != got:
        diff = sorted(set(ref_sd.items()) ^ set(got.items()))[:_MAX_LISTED]
        raise BackboneWeightsError(
            f"model_cfg ({cfg.arch}, patch {cfg.patch_size}, img {cfg.img_size}, "
            f"{cfg.num_register_tokens} registers) does not describe this model; differing entries: {diff}"
        )


def export_backbone(model: nn.Module, path: str | Path, model_cfg: ModelConfig | None = None) -> Path:
    """Write the backbone in the official flat layout to `path` (atomically) and its ModelConfig
    as `config.yaml` beside it. `model_cfg` defaults to the config the model was built from.

    Returns the path of the weights file. A directory path gets `backbone.pth` inside it; its
    sha256 goes to `<path>.sha256` (`save_weights`).
    """
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        path = path / BACKBONE_FILE
    cfg = model_cfg if model_cfg is not None else getattr(unwrap(model), "config", None)
    if cfg is None:
        raise BackboneWeightsError(
            "export_backbone needs a ModelConfig: pass model_cfg=, or build the model with build_backbone()"
        )
    sd = _export_state_dict(model)
    _check_config_matches(sd, cfg)
    save_weights(sd, path)
    save_config(cfg, path.parent / CONFIG_FILE)
    return path


def save_weights(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path` atomically, then its sha256 to `<path>.sha256` (what `read_weights`
    checks). The old record goes first, so a kill in between leaves a file without a record, never
    one with a wrong record. Saved through a file object: given a path, torch.save names the
    archive inside after the (random) temp file, and two saves of equal tensors would differ in
    their bytes, their sha256 and DVC's hash."""
    path = Path(path)
    side = checksum_path(path)
    side.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        sha = file_sha256(tmp)
    atomic_write_text(side, f"{sha}  {path.name}\n")


# ---------------------------------------------------------------------- rebuild


def infer_model_config(state_dict: Mapping[str, Tensor]) -> ModelConfig:
    """Recognise the architecture of a flat backbone state dict (e.g. an official hub file).

    Width and depth pick the preset; patch size, grid (img_size), registers, SwiGLU and
    LayerScale come from the shapes and names. Interpolation follows the hub conventions:
    register models interpolate to a size with antialiasing (offset 0), others use offset 0.1.
    """
    need = ["cls_token", "pos_embed", "patch_embed.proj.weight"]
    absent = [k for k in need if k not in state_dict]
    if absent:
        raise BackboneWeightsError(f"cannot recognise the architecture: the state dict lacks {absent}")
    dim = state_dict["cls_token"].shape[-1]
    patch = state_dict["patch_embed.proj.weight"].shape[-1]
    n_pos = state_dict["pos_embed"].shape[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise BackboneWeightsError(f"pos_embed has {n_pos} patch positions, which is not a square grid")
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    registers = state_dict["register_tokens"].shape[1] if "register_tokens" in state_dict else 0
    swiglu = any(".mlp.w12." in k for k in state_dict)
    layerscale = any(k.endswith(".ls1.gamma") for k in state_dict)
    return ModelConfig(
        arch=arch_from_shape(dim, depth),
        patch_size=patch,
        img_size=grid * patch,
        num_register_tokens=registers,
        layerscale_init=1.0 if layerscale else None,
        ffn_layer="swiglu" if swiglu else "mlp",
        interpolate_antialias=registers > 0,
        interpolate_offset=0.0 if registers > 0 else 0.1,
    )


def read_model_config(path: str | Path) -> ModelConfig:
    """Parse a config.yaml holding a ModelConfig, with a clear error when it is not one."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise DinoflowError(f"{p} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or "arch" not in data:
        raise DinoflowError(
            f"{p} is not a ModelConfig (a mapping with at least 'arch'); it was written by something else"
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as e:
        raise DinoflowError(f"{p} is not a valid ModelConfig:\n{e}") from e


def load_backbone(path: str | Path, **overrides: Any) -> DinoVisionTransformer:
    """Build the right architecture for a weights file, load it strictly, return it in eval mode.

    The architecture comes from `config.yaml` beside the file when present, else it is inferred
    from the state dict (`infer_model_config`). Keyword overrides replace ModelConfig fields
    (e.g. `interpolate_offset=0.0`). `path` may be a directory holding backbone.pth.
    """
    p = Path(path)
    if p.is_dir():
        p = p / BACKBONE_FILE
    sd = extract_backbone_state_dict(read_weights(p))
    cfg_path = p.parent / CONFIG_FILE
    cfg = read_model_config(cfg_path) if cfg_path.is_file() else infer_model_config(sd)
    if overrides:
        try:
            cfg = ModelConfig.model_validate({**cfg.model_dump(), **overrides})
        except ValidationError as e:
            raise DinoflowError(f"invalid backbone overrides {overrides}:\n{e}") from e
    model = backbone_from_config(cfg)
    load_backbone_weights(model, sd)
    return model.eval()
