"""The runtime (numpy + onnxruntime only, never torch or onnx): load the graphs of an export
folder on the CUDA or CPU provider and predict, escalating undecided rows level by level.
docs/design.md, "Escalation and calibration"."""

from matryoshka.errors import MatryoshkaError
from matryoshka.runtime.cascade import Prediction
from matryoshka.runtime.inputs import InputError
from matryoshka.runtime.providers import DeviceError
from matryoshka.runtime.runtime import Runtime

__all__ = ["DeviceError", "InputError", "MatryoshkaError", "Prediction", "Runtime"]
