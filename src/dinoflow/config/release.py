"""Config sections of the release stages: evaluation (`evaluate` and its datasets), registration
with the gate and the ONNX export (`register`), and MLflow tracking (`tracking`).
Part of `dinoflow.config` (import from there)."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator, model_validator

from dinoflow.config.base import STAGE_SEED_DOC, PositiveFloat, PositiveInt, SafeName, Section, Seed

Baseline = Literal["random_init", "raw_pixels"]
# dataset kinds scored by linear probes on patch tokens; the others are classification sets
DENSE_KINDS = ("segmentation_folder", "depth_folder", "demo_segmentation", "demo_depth")


class EvalDataset(Section):
    name: SafeName
    kind: Literal[
        "demo_mnist",
        "demo_digits",
        "folder",
        "shards",
        "segmentation_folder",
        "depth_folder",
        "demo_segmentation",
        "demo_depth",
    ] = Field(
        description="classification: demo_mnist, demo_digits, folder, shards; dense (linear probes on patch "
        "tokens): segmentation_folder (<split>/images + <split>/masks, class-id PNGs, 255 ignore), depth_folder "
        "(<split>/images + <split>/depth, 16-bit PNG millimetres, 0 invalid), demo_segmentation, demo_depth"
    )
    train: str | None = Field(
        None, description="folder/shards: the labelled train split (class per subfolder, or json `label`)"
    )
    test: str | None = Field(None, description="folder/shards: the labelled test split")
    image_size: int | None = Field(
        None, ge=8, description="dense kinds: side the whole image is resized to (null: evaluate.image_size)"
    )
    max_depth: float | None = Field(
        None, gt=0, description="depth kinds: the deepest bin in metres (null: the train split's deepest pixel)"
    )

    @model_validator(mode="after")
    def _paths_for_files(self) -> "EvalDataset":
        if self.kind in ("folder", "shards", "segmentation_folder", "depth_folder") and not (self.train and self.test):
            raise ValueError(f"dataset {self.name!r} of kind {self.kind!r} needs both `train` and `test` paths")
        return self


class EvaluateConfig(Section):
    models: dict[SafeName, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: {"teacher": "models/teacher/backbone.pth", "student": "models/student/backbone.pth"}
    )
    datasets: list[EvalDataset] = Field(
        default_factory=lambda: [
            EvalDataset(name="mnist", kind="demo_mnist"),
            EvalDataset(name="digits", kind="demo_digits"),
            EvalDataset(name="digit_mosaics", kind="demo_segmentation", image_size=56),
            EvalDataset(name="digit_depth", kind="demo_depth", image_size=56),
        ],
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
    baselines: list[Baseline] = Field(
        default_factory=lambda: list(get_args(Baseline)),
        description="baselines evaluated next to the models in the same run",
    )
    random_init_like: str | None = Field(
        None,
        description="model name whose architecture the random-init baseline copies (default: teacher, else the first)",
    )
    linear_batch_size: int = Field(256, ge=1, description="SGD batch of the linear probe; LR is scaled by batch/256")
    logreg_max_iter: int = Field(1000, ge=1)
    dense_lrs: list[PositiveFloat] = Field(
        default_factory=lambda: [1e-3, 1e-2, 1e-1], min_length=1, description="AdamW LR grid of the dense probes"
    )
    dense_epochs: int = Field(40, ge=1, description="epochs of each dense linear probe over the cached tokens")
    dense_batch_size: int = Field(16, ge=1, description="images per step of the dense probes")
    max_train: int | None = Field(None, ge=1, description="seeded subset of each train split (tests, quick runs)")
    max_test: int | None = Field(None, ge=1, description="seeded subset of each test split (tests, quick runs)")
    n_pca_images: int = Field(4, ge=0, description="images in the patch-PCA figure (0 turns the PNGs off)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    report_dir: str = "reports"
    seed: Seed | None = Field(None, description=STAGE_SEED_DOC)

    @model_validator(mode="after")
    def _consistent(self) -> "EvaluateConfig":
        for key in (
            "ks",
            "linear_n_last_blocks",
            "linear_avgpool",
            "linear_lrs",
            "logreg_cs",
            "baselines",
            "dense_lrs",
        ):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"evaluate.{key} lists a value twice: {values}")
        if all(d.kind in DENSE_KINDS for d in self.datasets):
            raise ValueError(
                "evaluate.datasets lists dense sets only: add a classification set (kind demo_mnist, demo_digits, "
                "folder or shards); the report, the model card and the registry gate are keyed on its k-NN"
            )
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluate.datasets: two datasets share a name ({names}); names key the report")
        if self.random_init_like is not None and self.random_init_like not in self.models:
            raise ValueError(
                f"evaluate.random_init_like {self.random_init_like!r} is not one of evaluate.models {list(self.models)}"
            )
        return self


class OnnxExportConfig(Section):
    """The student as ONNX next to the pyfunc model (dynamic batch), checked against PyTorch by onnxruntime."""

    enabled: bool = Field(True, description="export the student to ONNX at registration and log it inside the model")
    image_size: int | None = Field(
        None,
        ge=1,
        description="input side of the ONNX graph; null: evaluate.image_size (what the pyfunc model feeds the "
        "backbone); another size interpolates the positional embedding at export",
    )
    opset: int = Field(18, ge=18, description="ONNX opset of the export")
    atol: float = Field(1e-4, gt=0, description="largest |ONNX − PyTorch| allowed on the parity check")


class ServingConfig(Section):
    """What one image and one request may cost the served model and `dinoflow embed`. Checked from
    the image headers before any pixel is decoded; beyond a bound the served model answers 400 and
    `dinoflow embed` skips the image with the reason. The served model carries the values it was
    registered with."""

    max_image_pixels: int = Field(50_000_000, ge=1, description="decoded width × height of one image")
    max_aspect_ratio: float = Field(
        20.0, ge=1, description="longer side / shorter side of one image (the resize scales the shorter side up)"
    )
    max_resized_pixels: int = Field(
        4_000_000,
        ge=1,
        description="pixels of one image after the resize (shorter side → image_size·resize_ratio), before the crop",
    )
    max_request_pixels: int = Field(
        200_000_000, ge=1, description="decoded pixels of all images of one request to the served model"
    )


class RegisterConfig(Section):
    """Registration and the gate: floors on this run's own numbers, then the champion challenge."""

    model_name: str = Field("dinoflow-student", min_length=1, max_length=256)
    model_path: str = "models/student"
    eval_report: str = "reports/eval.json"
    dataset: str = Field("mnist", min_length=1, description="the eval.json dataset the gate reads")
    min_teacher_gain: float | None = Field(
        0.05,
        ge=-1,
        le=1,
        description="floor: teacher k-NN top-1 minus the random-init baseline's (evaluate.baselines); null: off",
    )
    min_retention: float | None = Field(0.95, ge=0, le=1.5, description="floor: student k-NN / teacher k-NN; null: off")
    min_knn_top1: float | None = Field(
        None,
        ge=0,
        le=1,
        description="optional absolute floor on the student's k-NN top-1 (off by default: it depends on the data)",
    )
    dense_floors: dict[str, float] = Field(
        default_factory=dict,
        description="optional bounds on the student's dense numbers, '<dataset>.<metric>': value — at least for "
        "miou / pixel_acc / delta1, at most for rmse / abs_rel (off by default)",
    )
    champion_tolerance: float = Field(
        0.005,
        ge=0,
        le=1,
        description="challenge: take the alias only with k-NN top-1 >= the champion's minus this, on the same evaluation set",
    )
    alias: str = Field(
        "champion",
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,255}$",
        description="MLflow alias: letters, digits, _ and -; not `latest` or `v<N>` (MLflow reserves them)",
    )
    report: str = "reports/registry.json"
    student_key: str = Field("student", description="the candidate's entry in the eval report")
    teacher_key: str = Field("teacher", description="the reference entry for the retention gate")
    baseline_key: str = Field("random_init", description="the random-init entry for the teacher-gain floor")
    teacher_path: str | None = Field(
        "models/teacher", description="also log this backbone as a model (not registered); null skips"
    )
    onnx: OnnxExportConfig = Field(default_factory=OnnxExportConfig)

    @field_validator("dense_floors")
    @classmethod
    def _dense_metric_names(cls, v: dict[str, float]) -> dict[str, float]:
        known = ("miou", "pixel_acc", "delta1", "rmse", "abs_rel")
        for key in v:
            ds, _, metric = key.rpartition(".")
            if not ds or metric not in known:
                raise ValueError(f"dense_floors key {key!r}: write '<dataset>.<metric>' with a metric of {known}")
        return v

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
        3,
        ge=0,
        le=10,
        description="retries of a failed request (backoff 1, 2, 4 s ...); then the stage fails with a named error",
    )
