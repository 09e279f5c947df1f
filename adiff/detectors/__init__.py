"""PyOD-compatible detectors, one per data kind."""
from adiff.detectors.base import BaseDetector, load
from adiff.detectors.image import ImageAnalysis, ImageDetector
from adiff.detectors.tabular import TabularDetector
from adiff.detectors.timeseries import TimeSeriesDetector

__all__ = ["BaseDetector", "ImageAnalysis", "ImageDetector", "TabularDetector", "TimeSeriesDetector", "load"]
