"""Checkpoint folders: config.json + model.safetensors + metrics.json, never pickles.

docs/design.md, "Data flow". `load_checkpoint` checks the folder and fails with one clear message
on a missing or corrupt file or a config that does not match the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from matryoshka.errors import (
    ArtifactError,
    ConfigError,
    MatryoshkaError,
    MissingArtifactError,
    not_a_folder,
)
from matryoshka.io import (
    publish,
    read_json_object,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    writing,
)
from matryoshka.model.config import MatryoshkaConfig
from matryoshka.model.transformer import MatryoshkaTransformer

CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.json"
TOKENIZER = "tokenizer.json"
TRAIN_HINT = "matryoshka train --preset demo --data demo --out artifacts/demo/checkpoint"


def save_checkpoint(folder: str | Path, model: MatryoshkaTransformer, metrics: dict,
                    files: dict[str, bytes] | None = None) -> None:
    """Write the three files, and `files` (tokenizer.json for text), into `folder` (the
    caller makes the folder itself atomic)."""
    folder = Path(folder)
    for name, data in (files or {}).items():
        write_bytes_atomic(folder / name, data)
    write_json_atomic(folder / CONFIG, model.config.to_dict())
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with writing(folder / WEIGHTS):
        # One metadata key: safetensors writes the metadata map in hash order, so with two
        # keys the same weights gave different bytes (and checkpoint sha256s) run to run.
        # The model's name is in config.json.
        save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    publish(folder / WEIGHTS)  # safetensors writes 0600; a checkpoint is for every reader
    write_json_atomic(folder / METRICS, metrics)


def read_config(folder: str | Path) -> MatryoshkaConfig:
    """The checkpoint's config, after checking that the folder holds a whole checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise not_a_folder(folder, "checkpoint folder")
        raise MissingArtifactError(f"checkpoint folder not found: {folder}; make one with: "
                                   f"{TRAIN_HINT}")
    for name in (CONFIG, WEIGHTS, METRICS):
        if not (folder / name).is_file():
            raise MissingArtifactError(f"checkpoint {folder} lacks {name}")
    try:
        return MatryoshkaConfig.from_dict(read_json_object(folder / CONFIG))
    except ConfigError as e:
        raise ArtifactError(f"{folder / CONFIG}: {e}") from None


def load_checkpoint(folder: str | Path) -> tuple[MatryoshkaTransformer, dict]:
    """The model (in eval mode) and its metrics.json.

    >>> model, metrics = load_checkpoint("artifacts/demo/checkpoint")  # doctest: +SKIP
    """
    folder = Path(folder)
    config = read_config(folder)
    metrics = read_json_object(folder / METRICS)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{folder / WEIGHTS} is corrupt or not a safetensors file ({e})"
                            ) from None
    model = MatryoshkaTransformer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))[:3]
        raise ArtifactError(f"{folder}: the weights do not match config.json (first "
                            f"differences: {diff})")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval(), metrics


def checkpoint_tokenizer(folder: str | Path, config: MatryoshkaConfig) -> bytes | None:
    """The bytes of the checkpoint's tokenizer.json; a text model must have one."""
    path = Path(folder) / TOKENIZER
    if config.input_kind != "text":
        return None
    if not path.is_file():
        raise MissingArtifactError(f"checkpoint {folder} is a text model but lacks {TOKENIZER}")
    return path.read_bytes()


def is_hf_folder(folder: str | Path) -> bool:
    """A Hugging Face model folder (config.json naming a model_type, no metrics.json), not a
    checkpoint of ours."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or (folder / METRICS).is_file():
        return False
    try:
        return "model_type" in read_json_object(folder / CONFIG)
    except MatryoshkaError:
        return False


def load_model(folder: str | Path, max_len: int | None = None
               ) -> tuple[MatryoshkaTransformer, dict, bytes | None]:
    """(model, metrics, tokenizer.json bytes or None): a checkpoint, or a fine-tuned Hugging
    Face `*ForSequenceClassification` folder imported exactly (model/pretrained.py; its texts cut to
    max_len tokens), whose metrics name its classes."""
    if not is_hf_folder(folder):
        model, metrics = load_checkpoint(folder)
        return model, metrics, checkpoint_tokenizer(folder, model.config)
    from matryoshka.model.pretrained import classifier_labels, import_encoder, read_hf_config

    _, cfg = read_hf_config(folder)
    if classifier_labels(cfg, str(folder)) is None:
        raise ConfigError(f"{folder} is a base encoder without a classifier head; start from it "
                          "with --pretrained (a fine-tuned classifier can be --init-from)")
    model, tokenizer, classes = import_encoder(folder, max_len=max_len)
    return model, {"labels": classes}, tokenizer.to_str().encode()


def checkpoint_sha256(folder: str | Path) -> str:
    return sha256_file(Path(folder) / WEIGHTS)


__all__ = ["checkpoint_sha256", "checkpoint_tokenizer", "is_hf_folder", "load_checkpoint",
           "load_model", "read_config", "save_checkpoint"]
