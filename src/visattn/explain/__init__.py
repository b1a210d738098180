"""Explanations: per-pixel maps from attention, rollout, gradients and CAMs; localisation
scores and figures."""

from .figure import save_attention_grid, save_confusion_matrix, save_model_attention
from .heatmap import (
    map_to_heatmap,
    maps_heatmap,
    model_heatmap,
    pointing_hits,
    received_attention,
    spatial_map_names,
)
from .methods import explain
from .metrics import PerturbationCurves, deletion_insertion

__all__ = [
    "PerturbationCurves",
    "deletion_insertion",
    "explain",
    "map_to_heatmap",
    "maps_heatmap",
    "model_heatmap",
    "pointing_hits",
    "received_attention",
    "save_attention_grid",
    "save_confusion_matrix",
    "save_model_attention",
    "spatial_map_names",
]
