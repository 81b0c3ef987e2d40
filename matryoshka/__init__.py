"""matryoshka: train one nested-width Transformer, export one ONNX graph per level, and run
them with a confidence cascade. This module stays light: it imports neither torch nor onnx.
"""

__version__ = "0.1.0"
