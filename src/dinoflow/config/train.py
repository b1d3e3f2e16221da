"""Config sections of the training stages: the backbone, head, crops, masks, loss, optimiser and
loop every training stage shares, and the `pretrain` and `distill` sections built from them.
Part of `dinoflow.config` (import from there)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from dinoflow.config.archs import ARCH_SPECS, ARCHS
from dinoflow.config.base import STAGE_SEED_DOC, PositiveFloat, Probability, Section, Seed
from dinoflow.config.model_size import MAX_PARAMS, MAX_PATCH_TOKENS, backbone_params, head_params, patch_tokens

Arch = Literal[ARCHS]  # type: ignore[valid-type]  # = Literal[*names] at runtime: pydantic checks the one table


class ModelConfig(Section):
    """A ViT backbone. Presets fix dim/depth/heads/FFN; the rest is free."""

    arch: Arch = "vit_tiny"
    patch_size: int = Field(14, ge=1)
    img_size: int = Field(224, ge=1, description="image side the positional embedding is built for")
    num_register_tokens: int = Field(0, ge=0)
    layerscale_init: float | None = Field(1e-5, gt=0, description="LayerScale init; null disables LayerScale")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_uniform: bool = True
    interpolate_antialias: bool = False
    interpolate_offset: float = Field(
        0.1,
        ge=0.0,
        description="0.1 (non-register hub models) scales by (n+offset)/M; 0 interpolates to a size (register models)",
    )
    ffn_layer: Literal["auto", "mlp", "swiglu"] = Field(
        "auto", description="auto: SwiGLU for vit_giant2, MLP otherwise"
    )
    block_chunks: int = Field(
        0, ge=0, description="official FSDP block chunking (parameter names blocks.<chunk>.<i>.*); 0 = flat"
    )

    @model_validator(mode="after")
    def _patch_divides(self) -> "ModelConfig":
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        return self

    @model_validator(mode="after")
    def _bounded_size(self) -> "ModelConfig":
        """The stated bounds (`dinoflow.config.model_size`), checked here so nothing is allocated for an absurd model."""
        n_tok = patch_tokens(self.img_size, self.patch_size)
        if n_tok > MAX_PATCH_TOKENS:
            raise ValueError(
                f"img_size {self.img_size} / patch_size {self.patch_size} makes a positional embedding of {n_tok:,} "
                f"patches, over the {MAX_PATCH_TOKENS:,} a model may have: lower img_size or raise patch_size"
            )
        n = backbone_params(
            self.arch, self.patch_size, self.img_size, self.num_register_tokens, self.ffn_layer,
            self.layerscale_init is not None,
        )  # fmt: skip
        if n > MAX_PARAMS:
            raise ValueError(
                f"{self.arch} with patch_size {self.patch_size}, img_size {self.img_size} and "
                f"{self.num_register_tokens} registers has {n:,} parameters, over the {MAX_PARAMS:,} a model may "
                "have: lower patch_size / num_register_tokens"
            )
        return self


class HeadConfig(Section):
    """DINOHead: MLP → bottleneck → L2-normalise → weight-normalised prototypes."""

    out_dim: int = Field(65536, ge=2, description="number of prototypes K")
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    nlayers: int = Field(3, ge=1)
    use_bn: bool = Field(
        False,
        description="BatchNorm in the head MLP (DINO v1 option; helps tiny models on small data break symmetry early)",
    )
    train_last_layer_norm: bool = Field(
        True,
        description="train the prototypes' weight-norm scale `weight_g` (DINOv2); "
        "false keeps it at 1 (DINO v1's norm_last_layer)",
    )
    separate_ibot_head: bool = False
    ibot_out_dim: int = Field(65536, ge=2)

    def params(self, in_dim: int) -> int:
        """Parameters of the DINO head, and of the iBOT head when it is separate."""
        n = head_params(in_dim, self.out_dim, self.hidden_dim, self.bottleneck_dim, self.nlayers)
        if self.separate_ibot_head:
            n += head_params(in_dim, self.ibot_out_dim, self.hidden_dim, self.bottleneck_dim, self.nlayers)
        return n


class CropConfig(Section):
    """Multi-crop augmentation (DINOv2 recipe values by default)."""

    global_size: int = Field(224, ge=8)
    local_size: int = Field(98, ge=8)
    n_global: int = Field(
        2,
        ge=1,
        le=2,
        description="global crops per image: 2 (the recipe; pretraining needs both) or 1 "
        "(distill.mode=features: teacher and student see the same one, half the teacher's work)",
    )
    n_local: int = Field(8, ge=0)
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(0.5, ge=0, le=1)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    color_jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # σ is in output pixels; the kernel is clamped to the crop side (odd) on tiny crops.
    blur_kernel_size: int = Field(9, ge=1, description="Gaussian kernel side (odd), as torchvision in DINOv2")
    # (global 1, global 2, locals): the INTENDED values of the paper / config. The official
    # code's GaussianBlur(p) wraps RandomApply(1 - p), so it never blurs global 1, blurs
    # global 2 with p 0.9 and locals with 0.5; dinoflow applies these values as written.
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    solarize_p: float = Field(0.2, ge=0, le=1, description="on the second global crop only")
    mean: tuple[Probability, Probability, Probability] = Field(
        (0.485, 0.456, 0.406), description="per channel, pixels in [0, 1]"
    )
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)

    @field_validator("global_scale", "local_scale", "blur_sigma", "aspect_ratio")
    @classmethod
    def _ordered(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        if not (0 < v[0] <= v[1]):
            raise ValueError(f"need 0 < low <= high, got {list(v)}")
        if (info.field_name or "").endswith("_scale") and v[1] > 1:
            raise ValueError(f"a crop scale is a share of the image area: need 0 < low <= high <= 1, got {list(v)}")
        return v

    @field_validator("blur_p")
    @classmethod
    def _probabilities(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0 <= p <= 1 for p in v):
            raise ValueError(f"each blur probability must lie in [0, 1], got {list(v)}")
        return v

    @field_validator("color_jitter")
    @classmethod
    def _jitter_strengths(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if min(v) < 0 or v[3] > 0.5:
            raise ValueError(
                f"color_jitter is (brightness, contrast, saturation, hue), each >= 0 and hue <= 0.5; got {list(v)}"
            )
        return v

    @field_validator("blur_kernel_size")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd (e.g. 9), got {v}")
        return v


class MaskConfig(Section):
    """iBOT block masking."""

    mask_sample_probability: float = Field(0.5, ge=0, le=1, description="share of global crops masked")
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5)
    min_num_patches: int = Field(4, ge=1)
    min_aspect: float = Field(0.3, gt=0)
    max_aspect: float | None = Field(None, gt=0, description="block aspect upper bound; null = 1 / min_aspect")
    max_num_patches_ratio: float = Field(0.5, gt=0, le=1, description="block size cap as a share of the grid")

    @field_validator("mask_ratio_min_max")
    @classmethod
    def _ratio_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 <= v[0] <= v[1] <= 1):
            raise ValueError(f"need 0 <= min <= max <= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _aspect_order(self) -> "MaskConfig":
        if self.max_aspect is not None and self.max_aspect < self.min_aspect:
            raise ValueError(f"max_aspect {self.max_aspect} is below min_aspect {self.min_aspect}")
        return self


class LossConfig(Section):
    dino_weight: float = Field(1.0, ge=0)
    ibot_weight: float = Field(1.0, ge=0)
    koleo_weight: float = Field(0.1, ge=0)
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp_epochs: float = Field(30, ge=0)
    centering: Literal["softmax", "sinkhorn_knopp"] = "sinkhorn_knopp"
    center_momentum: float = Field(0.9, ge=0, le=1)
    sinkhorn_iterations: int = Field(3, ge=1)


class OptimConfig(Section):
    base_lr: float = Field(0.004, gt=0, description="LR at total batch 1024; scaled by sqrt(batch/1024)")
    lr_scaling: Literal["sqrt", "linear", "none"] = "sqrt"
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(10, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    layerwise_decay: float = Field(0.9, gt=0, le=1)
    patch_embed_lr_mult: float = Field(0.2, ge=0)
    clip_grad: float | None = Field(3.0, gt=0)
    freeze_last_layer_epochs: float = Field(1, ge=0)
    momentum_teacher: float = Field(0.992, ge=0, le=1)
    final_momentum_teacher: float = Field(1.0, ge=0, le=1)

    @field_validator("betas")
    @classmethod
    def _adam_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"AdamW betas must each lie in [0, 1), got {list(v)}")
        return v


class TrainConfig(Section):
    """The loop: length, batch, device, distribution, checkpoints."""

    epochs: int = Field(100, ge=1)
    epoch_length: int = Field(1250, ge=1, description="optimiser steps per (official) epoch")
    batch_size_per_rank: int = Field(64, ge=1)
    num_workers: int | None = Field(
        None,
        ge=0,
        description="data-loader workers (decode, iBOT masks); null: 0 on a CPU, on a GPU the CPUs per process − 1 (at most 8)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    fsdp_reshard_after_forward: bool | Literal["auto"] = Field(
        "auto",
        description="FSDP2: free gathered weights after the forward; auto: yes on one node, down to the node across nodes",
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each transformer block (one graph per block); auto: on CUDA, not on a CPU"
    )
    pack_crops: bool = Field(
        True, description="run global and local crops through each block in one pass (same numbers)"
    )
    activation_checkpointing: Literal["none", "selective", "full"] = Field(
        "none", description="recompute activations in the backward: selective (element-wise ops only) or full blocks"
    )
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int = Field(500, ge=1)
    async_checkpoint: bool = Field(True, description="write checkpoints in the background (published when complete)")
    log_every: int = Field(10, ge=1, description="read metrics from the device (and log them) every this many steps")
    max_steps: int | None = Field(None, ge=1, description="stop early after this many steps (tests, smoke runs)")
    load_size: int | None = Field(
        None, ge=8, description="images are loaded with this shorter side, aspect kept (default: the global crop size)"
    )
    progress: bool = True
    checkpoint_dir: str | None = Field(
        None,
        description="resumable checkpoints go to <this>/<stage>-<settings hash>/ (default: <out_dir>/ckpt); keep it "
        "outside the stage's DVC outs (DVC deletes those before a rerun) and on durable storage in a pipeline",
    )
    restart: bool = Field(
        False,
        description="start over in out_dir: delete its exports and checkpoints, even when its train_config.yaml "
        "records other settings (without it such a directory is refused); set it for one run, e.g. -S <stage>.train.restart=true",
    )

    @field_validator("checkpoint_dir")
    @classmethod
    def _local_checkpoint_dir(cls, v: str | None) -> str | None:
        if v is not None and "://" in v:
            raise ValueError(
                "checkpoints are written to a file system path; mount durable storage "
                "(a volume, a PVC) and give its path"
            )
        return v


class PretrainConfig(Section):
    data: str = Field("data/curated", description="shard dir, image folder or s3://bucket/prefix")
    out_dir: str = "models/teacher"
    report_csv: str = "reports/pretrain.csv"
    model: ModelConfig = Field(default_factory=ModelConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    crops: CropConfig = Field(default_factory=CropConfig)
    masks: MaskConfig = Field(default_factory=MaskConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: Seed | None = Field(None, description=STAGE_SEED_DOC)

    @model_validator(mode="after")
    def _bounded_head(self) -> "PretrainConfig":
        n = self.head.params(ARCH_SPECS[self.model.arch].embed_dim)
        if n > MAX_PARAMS:
            raise ValueError(
                f"head (out_dim {self.head.out_dim}, ibot_out_dim {self.head.ibot_out_dim}, hidden_dim "
                f"{self.head.hidden_dim}, bottleneck_dim {self.head.bottleneck_dim}, nlayers {self.head.nlayers}) "
                f"has {n:,} parameters, over the {MAX_PARAMS:,} a model may have: lower them"
            )
        return self

    @model_validator(mode="after")
    def _two_global_crops(self) -> "PretrainConfig":
        if self.crops.n_global != 2:
            raise ValueError(
                f"pretrain.crops.n_global is {self.crops.n_global}: DINO and iBOT compare each global crop "
                "with the teacher's other one, so pretraining needs 2; remove the setting"
            )
        return self

    @model_validator(mode="after")
    def _something_to_learn(self) -> "PretrainConfig":
        w = self.loss
        if w.dino_weight == 0 and w.ibot_weight == 0 and w.koleo_weight == 0:
            raise ValueError(
                "loss.dino_weight, loss.ibot_weight and loss.koleo_weight are all 0: nothing would be trained"
            )
        return self


class StudentConfig(ModelConfig):
    """One student of a multi-student distillation: a backbone and the name of its output folder."""

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the student's name: its folder <distill.out_dir>/<name>/ and its registered model's suffix",
    )


class DistillConfig(Section):
    mode: Literal["heads", "features"] = Field(
        "heads",
        description="'heads': DINO+iBOT+KoLeo through the teacher's heads; 'features': head-free token matching",
    )
    teacher: str = Field(
        "models/teacher", description="a pretrain out_dir (heads mode) or a backbone .pth (features mode)"
    )
    teacher_arch: Arch | None = Field(None, description="features mode with an official file: the teacher's arch")
    teacher_patch_size: int | None = Field(None, ge=1)
    teacher_num_register_tokens: int | None = Field(None, ge=0)
    data: str = "data/curated"
    out_dir: str = "models/student"
    report_csv: str = "reports/distill.csv"
    student: ModelConfig = Field(default_factory=lambda: ModelConfig(arch="vit_pico"))
    students: list[StudentConfig] = Field(
        default_factory=list,
        description="several students from one teacher pass per batch (each: the `student` fields plus a `name`); "
        "empty: the one `student`. Each is exported to <out_dir>/<name>/",
    )
    crops: CropConfig = Field(default_factory=CropConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    student_ema: float = Field(0.999, ge=0, le=1, description="momentum of the exported student EMA")
    feature_patch_weight: float = Field(1.0, ge=0)
    seed: Seed | None = Field(None, description=STAGE_SEED_DOC)

    @model_validator(mode="after")
    def _heads_need_two_globals(self) -> "DistillConfig":
        if self.mode == "heads" and self.crops.n_global != 2:
            raise ValueError(
                f"distill.crops.n_global is {self.crops.n_global}: mode heads matches each student crop with "
                "the teacher's other global crop, so it needs 2; use mode features for one global crop"
            )
        return self

    @model_validator(mode="after")
    def _one_student_form(self) -> "DistillConfig":
        names = [st.name for st in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"distill.students: two students share a name ({names}); names key their folders")
        # the one-student form at its default is what a saved family config holds: only a set one conflicts
        if self.students and self.student != type(self).model_fields["student"].get_default(call_default_factory=True):
            raise ValueError(
                "set distill.student (one student) or distill.students (several), not both: "
                "remove distill.student from the params file when listing students"
            )
        return self
