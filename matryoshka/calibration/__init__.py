"""Calibration (numpy, scipy, the runtime): per-level temperatures, escalation thresholds
with a Learn-then-Test guarantee, and INT8 static quantization.
docs/design.md, "Escalation and calibration"."""

from matryoshka.calibration.calibrate import calibrate, calibration_table
from matryoshka.calibration.thresholds import fit_temperature, learn_then_test, simulate

__all__ = ["calibrate", "calibration_table", "fit_temperature", "learn_then_test", "simulate"]
