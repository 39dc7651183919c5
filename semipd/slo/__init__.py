"""The SLO-aware control plane: constraints, predictors, the algorithm and the controller (no torch)."""

from semipd.slo.algorithm import Evaluation, SLOAlgorithm
from semipd.slo.candidates import CandidateBounds, ResourceAllocationCandidate, generate_candidates
from semipd.slo.constraints import SLOConstraints
from semipd.slo.controller import MetricsSource, SLOAwareResourceController
from semipd.slo.decision import Decision
from semipd.slo.observation import Observation
from semipd.slo.paper import PaperPredictor
from semipd.slo.predictors import (
    HeuristicPredictor,
    PerformanceProfile,
    Prediction,
    Predictor,
    ProfilePredictor,
    available_predictors,
    create_predictor,
    parse_predictor_spec,
    register_predictor,
)

__all__ = [
    "CandidateBounds",
    "Decision",
    "Evaluation",
    "HeuristicPredictor",
    "MetricsSource",
    "Observation",
    "PaperPredictor",
    "PerformanceProfile",
    "Prediction",
    "Predictor",
    "ProfilePredictor",
    "ResourceAllocationCandidate",
    "SLOAlgorithm",
    "SLOAwareResourceController",
    "SLOConstraints",
    "available_predictors",
    "create_predictor",
    "generate_candidates",
    "parse_predictor_spec",
    "register_predictor",
]
