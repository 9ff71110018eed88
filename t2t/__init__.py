"""t2t-lens: Tokens-to-Token ViT and ViT models, their released weights, and a trace of every step."""

from t2t.images import ImageError, sample_images
from t2t.inference import EvalTransform, class_names, load_images, predict, transform_for
from t2t.loading import load_model
from t2t.registry import MODELS, ModelConfig, get_config, list_models
from t2t.trace import Trace, default_device, receptive_field, receptive_fields, trace
from t2t.weights import Checkpoint, CheckpointError, create_model, list_embedded, load_checkpoint, read_checkpoint

__all__ = [
    "MODELS", "ModelConfig", "get_config", "list_models", "Trace", "trace", "receptive_field",
    "receptive_fields", "default_device", "Checkpoint", "CheckpointError", "create_model", "list_embedded",
    "load_checkpoint", "read_checkpoint", "load_model", "transform_for", "EvalTransform", "load_images", "predict",
    "class_names", "sample_images", "ImageError",
]
