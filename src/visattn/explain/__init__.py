"""Explanations: per-pixel maps from attention, rollout, gradients and CAMs; localisation
and faithfulness scores and figures. The scorecard itself is
``visattn.explain.scorecard.scorecard`` (the module keeps its name here)."""

from .figure import save_attention_grid, save_confusion_matrix, save_model_attention
from .heatmap import (
    has_spatial_attention,
    map_to_heatmap,
    maps_heatmap,
    model_heatmap,
    pointing_hits,
    received_attention,
    spatial_map_names,
)
from .methods import explain
from .metrics import PerturbationCurves, deletion_insertion
from .scorecard import MethodScores, Scorecard, quick_scorecard
from .scorecard_files import records, scorecard_json, write_scorecard

__all__ = [
    "MethodScores",
    "PerturbationCurves",
    "Scorecard",
    "deletion_insertion",
    "explain",
    "has_spatial_attention",
    "map_to_heatmap",
    "maps_heatmap",
    "model_heatmap",
    "pointing_hits",
    "quick_scorecard",
    "received_attention",
    "records",
    "save_attention_grid",
    "save_confusion_matrix",
    "save_model_attention",
    "scorecard_json",
    "spatial_map_names",
    "write_scorecard",
]
