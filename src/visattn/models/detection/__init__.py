"""Detectors over attention backbones: torchvision's FCOS, RetinaNet and Faster R-CNN with
visattn backbones (``backbones.py``), a feature pyramid with optional neck attention
(``necks.py``), and the settings small images need (``detectors.py``). See docs/detection.md."""

from .backbones import BACKBONES, ConvBackbone, ResNetBackbone, TimmBackbone, build_backbone
from .detectors import DETECTORS, Detector, build_detector, create_detector, default_anchor_sizes
from .necks import DetectionBody

__all__ = [
    "BACKBONES",
    "DETECTORS",
    "ConvBackbone",
    "DetectionBody",
    "Detector",
    "ResNetBackbone",
    "TimmBackbone",
    "build_backbone",
    "build_detector",
    "create_detector",
    "default_anchor_sizes",
]
