"""The exporter (torch, onnx, onnxsim): slice each level out, export it to ONNX, simplify,
validate against torch, write the manifest. DESIGN.md, "The artifact folder"."""

from matryoshka.exporter.export import EXPORTER, export, export_table

__all__ = ["EXPORTER", "export", "export_table"]
