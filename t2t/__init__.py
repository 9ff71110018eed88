"""t2t-lens: Tokens-to-Token ViT and ViT models, their released weights, and a trace of every step."""

from t2t.loading import load_model
from t2t.registry import MODELS, ModelConfig, get_config, list_models
from t2t.trace import Trace, default_device, receptive_field, receptive_fields, trace
from t2t.weights import Checkpoint, CheckpointError, create_model, list_embedded, load_checkpoint, read_checkpoint

__all__ = [
    "MODELS", "ModelConfig", "get_config", "list_models", "Trace", "trace", "receptive_field",
    "receptive_fields", "default_device", "Checkpoint", "CheckpointError", "create_model", "list_embedded",
    "load_checkpoint", "read_checkpoint", "load_model",
]
