"""The file formats dinoflow reads as images, one definition for every reader: curation's source
listing (`data.sources`), training's discovery (`train.data`, through that listing), the
evaluation folders (`evaluation.datasets`) and the shard writer/reader (`data.shards`, whose tar
members carry the suffix without its dot). Anything else in a folder is not an input.
"""

from __future__ import annotations

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
TAR_SUFFIX = ".tar"
