"""Every config key is read by the code: a key nobody reads is documentation that lies (a user sets
it and nothing changes).

The check is static and by name: a key counts as read when its name appears in the code outside
the config modules as an attribute access (`cfg.pretrain.loss.ibot_weight` reads `ibot_weight`)
or as a string literal (`getattr(tcfg, "request_retries", 3)`, a dict key). It is coarse (a name
shared by two sections is read if either is), but a new key that no code mentions fails here.
Sections handed to code whole, as keyword arguments, are listed in GENERIC with the function
that takes them, and checked against that function's parameters instead.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from pydantic import BaseModel, Field

from dinoflow.config import Config, ModelConfig
from dinoflow.config.reference import leaf_keys

ROOT = Path(__file__).resolve().parents[2]
CODE = [ROOT / "src" / "dinoflow", ROOT / "components", ROOT / "pipelines"]
# the modules that define the keys (a key's own definition and validators are not reads); the
# rest of the config package (`config/stages.py`: what a stage reads) is code that reads keys
CONFIG_DIR = ROOT / "src" / "dinoflow" / "config"
CONFIG_MODULES = {"__init__.py", "root.py", "base.py", "train.py", "data.py", "release.py", "reference.py"}


def _build_backbone_parameters() -> set[str]:
    from dinoflow.models.vit import build_backbone

    return set(inspect.signature(build_backbone).parameters)


# Sections read whole: section model → (what takes it, the names it accepts). A field of such a
# section is read when the taker accepts it by name (inspect), not by a textual search.
GENERIC = {
    # models.vit.backbone_from_config: `build_backbone(**cfg.model_dump())` (pretrain.model,
    # distill.student, and every backbone file's saved config)
    ModelConfig: ("dinoflow.models.vit.build_backbone", _build_backbone_parameters),
}


def names_in_code(roots: list[Path] = CODE) -> set[str]:
    """Attribute names accessed and string literals written in the code (config modules excluded)."""
    names: set[str] = set()
    for root in roots:
        for path in root.rglob("*.py"):
            if path.parent == CONFIG_DIR and path.name in CONFIG_MODULES:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute):
                    names.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names.add(node.value)
    return names


def _generic_sections(model: BaseModel, prefix: str = "") -> dict[str, type[BaseModel]]:
    """Dotted prefix → section class, for every GENERIC section inside `model`."""
    out: dict[str, type[BaseModel]] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            if type(value) in GENERIC:
                out[f"{prefix}{name}."] = type(value)
            out.update(_generic_sections(value, f"{prefix}{name}."))
    return out


def unread_keys(config: BaseModel, names: set[str]) -> list[str]:
    """The dotted keys of `config` that no code reads."""
    generic = _generic_sections(config)
    unread = []
    for key in leaf_keys(config):
        section = next((cls for p, cls in generic.items() if key.startswith(p)), None)
        leaf = key.rsplit(".", 1)[-1]
        if section is not None:
            _, accepted = GENERIC[section]
            if leaf not in accepted() and leaf != "arch":  # arch: build_backbone's positional first argument
                unread.append(key)
        elif leaf not in names:
            unread.append(key)
    return unread


def test_every_config_key_is_read():
    unread = unread_keys(Config(), names_in_code())
    assert not unread, (
        f"config keys that no code reads: {unread}. Wire each into the code that should use "
        "it, or remove it from the config (and regenerate docs/configuration.md: "
        "python -m dinoflow.config.reference --write)"
    )


def test_the_excluded_modules_are_the_ones_that_define_the_keys():
    """A renamed or moved config module would otherwise count its own definitions as reads."""
    assert {p.name for p in CONFIG_DIR.glob("*.py")} >= CONFIG_MODULES
    defined = {
        path.name
        for path in CONFIG_DIR.glob("*.py")
        if any(
            isinstance(node, ast.ClassDef) and node.name.endswith("Config")
            for node in ast.walk(ast.parse(path.read_text()))
        )
    }
    assert defined and defined <= CONFIG_MODULES, f"config sections defined outside CONFIG_MODULES: {defined}"


def test_a_key_nobody_reads_is_found():
    """The check itself: a new key with a name no code mentions, and a new generic-section field the
    taker does not accept, are both reported."""

    class WithExtraModel(ModelConfig):
        qk_norm_never_wired: bool = False

    class Extended(Config):
        brand_new_setting_nobody_reads: int = 0
        model_section: WithExtraModel = Field(default_factory=WithExtraModel)

    GENERIC[WithExtraModel] = GENERIC[ModelConfig]
    try:
        assert unread_keys(Extended(), names_in_code()) == [
            "brand_new_setting_nobody_reads",
            "model_section.qk_norm_never_wired",
        ]
    finally:
        del GENERIC[WithExtraModel]


def test_generic_sections_are_taken_whole_where_the_comment_says():
    """The GENERIC entry describes the code: every field of a ModelConfig, each set away from its
    default, reaches the backbone that backbone_from_config builds (its recorded config)."""
    from dinoflow.models.vit import backbone_from_config

    cfg = ModelConfig(
        arch="vit_pico",
        patch_size=7,
        img_size=28,
        num_register_tokens=1,
        layerscale_init=0.5,
        drop_path_rate=0.1,
        drop_path_uniform=False,
        interpolate_antialias=True,
        interpolate_offset=0.0,
        ffn_layer="swiglu",
        block_chunks=2,
    )
    assert {k for k, v in cfg.model_dump().items() if v != ModelConfig.model_fields[k].default} == set(
        ModelConfig.model_fields
    ), "every field is set away from its default"
    assert backbone_from_config(cfg).config == cfg
