"""The exporter, the torch side of an export (torch, onnx, onnxsim): slice each level out,
export it to ONNX, simplify, validate against torch, write the folder through
matryoshka.folder. docs/design.md, "The export folder"."""

from matryoshka.exporter.export import EXPORTER, export, export_table

__all__ = ["EXPORTER", "export", "export_table"]
