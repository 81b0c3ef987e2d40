"""The export folder's manifest.json: its schema version, reading it, checking it.

DESIGN.md, "The artifact folder". numpy and the standard library only.
"""

from __future__ import annotations

from pathlib import Path

from matryoshka.errors import ArtifactError, MissingArtifactError
from matryoshka.io import read_json_object

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def level_file(dim: int, variant: str = "fp32") -> str:
    """'level-0064.onnx' for fp32, 'level-0064.int8.onnx' for int8."""
    return f"level-{dim:04d}.onnx" if variant == "fp32" else f"level-{dim:04d}.{variant}.onnx"


def read_manifest(folder: str | Path) -> dict:
    """Load and check manifest.json of an export folder.

    >>> read_manifest("artifacts/demo/export")["levels"][0]["dim"]  # doctest: +SKIP
    64
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise MissingArtifactError(f"export folder not found: {folder}; make one with: "
                                   "mexport --levels 64,128,256,512")
    if not path.is_file():
        raise MissingArtifactError(f"{folder} has no {MANIFEST}; is it an export folder?")
    manifest = read_json_object(path)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema_version {version!r}; this matryoshka reads "
                            f"version {SCHEMA_VERSION}")
    for key in ("input", "levels", "model"):
        if key not in manifest:
            raise ArtifactError(f"{path} lacks the {key!r} section")
    if not manifest["levels"]:
        raise ArtifactError(f"{path} lists no levels")
    return manifest
