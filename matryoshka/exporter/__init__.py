"""The exporter (torch, onnx, onnxsim): slice each level out, export it to ONNX, simplify,
validate against torch, write the manifest; and the cascade graph built from the levels' graphs
(onnx only). docs/design.md, "The export folder" and "The cascade as one graph"."""

__all__ = ["EXPORTER", "export", "export_table"]


def __getattr__(name: str):
    # Lazy, so that calibrate and tune, which rebuild cascade graphs (onnx only), do not
    # import torch through this package.
    if name in __all__:
        import importlib

        module = importlib.import_module("matryoshka.exporter.export")
        # importing the submodule binds its name, `export`, to it here: bind the function
        globals().update({n: getattr(module, n) for n in __all__})
        return globals()[name]
    raise AttributeError(f"module 'matryoshka.exporter' has no attribute {name!r}")
