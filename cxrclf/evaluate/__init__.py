"""Evaluation: metrics, intervals, calibration, plots and reports."""
