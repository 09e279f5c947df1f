"""PyOD-compatible detectors, one per data kind."""
from adiff.detectors.base import BaseDetector, load
from adiff.detectors.image import ImageAnalysis, ImageDetector
from adiff.detectors.multimodal import MultimodalDetector, MultimodalScores
from adiff.detectors.tabular import TabularDetector
from adiff.detectors.timeseries import TimeSeriesDetector
from adiff.detectors.video import VideoDetector

__all__ = ["BaseDetector", "ImageAnalysis", "ImageDetector", "MultimodalDetector", "MultimodalScores", "TabularDetector", "TimeSeriesDetector", "VideoDetector", "load"]
