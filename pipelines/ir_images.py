"""The images a compiled pipeline runs, chosen at compile time: a registry prefix or explicit
references, pinned by digest when known, and the pull secrets every step pod gets.

The components are built with the images of `components/images.py` (`dinoflow/dinoflow-*:<version>`,
which no public registry serves); `apply_images` rewrites the compiled IR's executors to the
user's references, makes the training image the default of the DAG's `image` parameter (the
TrainJob pods' image) and adds the pull secrets to every executor of the platform spec.

Why digests: KFP's cache key holds a step's image *string*, not its content. A tag pushed again
with new code would be served from cache; `name@sha256:…` changes the key with the content.
`make images REGISTRY=…` pushes both images and writes their digests to build/images.json, which
`--images-file` reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from components import images as built
from dinoflow.errors import DinoflowError
from dinoflow.launch import images as defaults
from dinoflow.launch.k8s_labels import PULL_SECRETS_ENV

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
KINDS = ("train", "cpu")
# the image names the registry prefix replaces (docker/Dockerfile, docker/Dockerfile.cpu)
NAMES = {"train": defaults.TRAIN_IMAGE_NAME, "cpu": defaults.CPU_IMAGE_NAME}


@dataclass(frozen=True)
class Images:
    """The training (CUDA) and CPU image references, and the image pull secrets of the step pods."""

    train: str = defaults.TRAIN_IMAGE
    cpu: str = defaults.CPU_IMAGE
    pull_secrets: tuple[str, ...] = ()

    def refs(self) -> dict[str, str]:
        return {"train": self.train, "cpu": self.cpu}


def has_digest(ref: str) -> bool:
    """True for `name[:tag]@sha256:<64 hex>`."""
    return "@" in ref and bool(DIGEST.match(ref.rsplit("@", 1)[1]))


def _check_ref(kind: str, ref: str) -> str:
    if not ref or any(c.isspace() for c in ref) or ref.count("@") > 1:
        raise DinoflowError(f"the {kind} image reference {ref!r} is not an image name (registry/name[:tag][@sha256:…])")
    if "@" in ref and not has_digest(ref):
        raise DinoflowError(
            f"the {kind} image {ref!r} has a malformed digest: expected @sha256: and 64 lowercase hex digits"
        )
    return ref


def _with_digest(kind: str, ref: str, digest: str) -> str:
    if not DIGEST.match(digest):
        raise DinoflowError(f"--image-digest {kind}={digest!r}: expected sha256: and 64 lowercase hex digits")
    return f"{ref.split('@', 1)[0]}@{digest}"


def _images_file(path: str) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DinoflowError(f"cannot read the images file {path}: {e} (`make images REGISTRY=…` writes it)") from None
    if not isinstance(data, dict) or not set(data) <= set(KINDS) or not all(isinstance(v, str) for v in data.values()):
        raise DinoflowError(f"the images file {path} must be a JSON object with string keys among {KINDS}")
    return data


def resolve_images(
    *,
    registry: str | None = None,
    train: str | None = None,
    cpu: str | None = None,
    images_file: str | None = None,
    digests: list[str] | None = None,
    pull_secrets: list[str] | None = None,
) -> Images:
    """The references, later sources winning: defaults < `registry` prefix < images file < explicit
    `train` / `cpu` < `digests` (`train=sha256:…`, pinning whichever reference the kind has)."""
    refs = Images().refs()
    if registry:
        prefix = registry.rstrip("/")
        refs = {k: f"{prefix}/{NAMES[k].split('/')[-1]}:{defaults.__version__}" for k in KINDS}
    if images_file:
        refs.update(_images_file(images_file))
    refs.update({k: v for k, v in (("train", train), ("cpu", cpu)) if v})
    for item in digests or []:
        kind, sep, digest = item.partition("=")
        if not sep or kind not in KINDS:
            raise DinoflowError(f"--image-digest {item!r}: expected KIND=sha256:<hex> with KIND one of {KINDS}")
        refs[kind] = _with_digest(kind, refs[kind], digest)
    secrets = tuple(dict.fromkeys(s for s in pull_secrets or [] if s))
    return replace(Images(), **{k: _check_ref(k, v) for k, v in refs.items()}, pull_secrets=secrets)


def unpinned(images: Images) -> list[str]:
    """The references without a digest (their cache keys follow the tag, not the content)."""
    return [ref for ref in images.refs().values() if not has_digest(ref)]


def apply_images(docs: list[dict[str, Any]], images: Images) -> None:
    """Rewrite the compiled IR (pipeline spec, then platform spec) in place to `images`."""
    built = {defaults_ref: images.refs()[k] for k, defaults_ref in _built_refs().items()}
    executors = docs[0]["deploymentSpec"]["executors"]
    for label, ex in executors.items():
        container = ex.get("container", {})
        if container.get("image") not in built:
            raise DinoflowError(
                f"executor {label} runs {container.get('image')!r}, which is none of the project's images"
            )
        container["image"] = built[container["image"]]
    if images.pull_secrets:
        platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for label, ex in executors.items():
            platform.setdefault(label, {})["imagePullSecret"] = [
                {"secretName": s, "secretNameParameter": {"runtimeValue": {"constant": s}}} for s in images.pull_secrets
            ]
            # a step that launches a TrainJob gives its node pods the same secrets (dinoflow.launch.training)
            env = ex["container"].setdefault("env", [])
            env.append({"name": PULL_SECRETS_ENV, "value": ",".join(images.pull_secrets)})


def _built_refs() -> dict[str, str]:
    """The references the components were built with (components/images.py, environment included)."""
    return {"train": built.TRAIN_IMAGE, "cpu": built.CPU_IMAGE}
