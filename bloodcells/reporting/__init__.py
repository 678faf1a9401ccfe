"""Reporting: run-dir outputs (CSV, JSON, plots), report.html and Grad-CAM. Imports every room
below it, never runs or sweeps."""
