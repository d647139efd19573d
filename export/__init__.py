"""jrm_engine.export: the scoring graph and its compiled forms (ONNX, TensorRT, AOTInductor package)."""
from .graph import (DEFAULT_POSITIONS, INPUT_NAMES, POSITION_MODES, SUPPORTED_MODEL_TYPES, ScoringGraph,
                    VisionEncoder, pad_text)
from .group import GroupScorer

__all__ = ["DEFAULT_POSITIONS", "INPUT_NAMES", "POSITION_MODES", "SUPPORTED_MODEL_TYPES", "ScoringGraph",
           "VisionEncoder", "GroupScorer", "pad_text"]
