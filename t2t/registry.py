"""One registry of named model configurations: `create_model(name)` and `list_models()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from t2t.t2t_vit import T2TViT
from t2t.vit import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
T2T_RELEASE = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture arguments plus what it takes to use and compare the model."""

    name: str
    family: str  # "t2t" or "vit"
    args: dict[str, Any]
    url: str | None = None  # released ImageNet-1k weights
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.9
    img_size: int = 224
    top1: float | None = None  # ImageNet-1k top-1 of the released weights (paper or model card)
    paper_gmacs: float | None = None  # MACs at img_size, as the paper's table gives them
    extra: dict[str, Any] = field(default_factory=dict)


def _t2t(name: str, tokens_type: str, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
         url: str | None, top1: float | None, gmacs: float | None, qk_dim: int | None = None,
         img_size: int = 224) -> ModelConfig:
    # The released checkpoints were trained with the backbone scale embed_dim ** -0.5 (not the
    # usual head_dim ** -0.5): the official code sets it when loading them, so it is our default.
    args = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_ratio=mlp_ratio, qk_scale=(qk_dim or embed_dim) ** -0.5)
    return ModelConfig(name, "t2t", args, url and T2T_RELEASE + url, img_size=img_size, top1=top1, paper_gmacs=gmacs)


def _vit(name: str, embed_dim: int, depth: int, num_heads: int, url: str, top1: float,
         gmacs: float | None = None, img_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
         crop_pct: float = 0.875) -> ModelConfig:
    args = dict(patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True)
    return ModelConfig(name, "vit", args, url, mean, std, crop_pct, img_size, top1, gmacs)


_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_DEIT = "https://dl.fbaipublicfiles.com/deit/"
_HALF = (0.5, 0.5, 0.5)

MODELS: dict[str, ModelConfig] = {c.name: c for c in [
    # T2T-ViT (Yuan et al. 2021, Tables 2 and 3 and the official README)
    _t2t("t2t_vit_7", "performer", 256, 7, 4, 2.0, "71.7_T2T_ViT_7.pth.tar", 71.7, 1.1),
    _t2t("t2t_vit_10", "performer", 256, 10, 4, 2.0, "75.2_T2T_ViT_10.pth.tar", 75.2, 1.5),
    _t2t("t2t_vit_12", "performer", 256, 12, 4, 2.0, "76.5_T2T_ViT_12.pth.tar", 76.5, 1.8),
    _t2t("t2t_vit_14", "performer", 384, 14, 6, 3.0, "81.5_T2T_ViT_14.pth.tar", 81.5, 4.8),
    _t2t("t2t_vit_14_384", "performer", 384, 14, 6, 3.0, "83.3_T2T_ViT_14.pth.tar", 83.3, None, img_size=384),
    _t2t("t2t_vit_19", "performer", 448, 19, 7, 3.0, "81.9_T2T_ViT_19.pth.tar", 81.9, 8.5),
    _t2t("t2t_vit_24", "performer", 512, 24, 8, 3.0, "82.3_T2T_ViT_24.pth.tar", 82.3, 13.8),
    _t2t("t2t_vit_t_14", "transformer", 384, 14, 6, 3.0, "81.7_T2T_ViTt_14.pth.tar", 81.7, 6.1),
    _t2t("t2t_vit_t_19", "transformer", 448, 19, 7, 3.0, "82.4_T2T_ViTt_19.pth.tar", 82.4, 9.8),
    _t2t("t2t_vit_t_24", "transformer", 512, 24, 8, 3.0, "82.6_T2T_ViTt_24.pth.tar", 82.6, 15.0),
    # the CNN-inspired variants of the paper's ablation (no released weights)
    _t2t("t2t_vit_14_resnext", "performer", 384, 14, 32, 3.0, None, None, None),
    _t2t("t2t_vit_14_wide", "performer", 768, 4, 12, 3.0, None, None, None, qk_dim=512),
    # DeiT (Touvron et al. 2021), ImageNet-1k only, as T2T-ViT
    _vit("deit_tiny_patch16_224", 192, 12, 3, _DEIT + "deit_tiny_patch16_224-a1311bcf.pth", 72.2, 1.3),
    _vit("deit_small_patch16_224", 384, 12, 6, _DEIT + "deit_small_patch16_224-cd65a155.pth", 79.8, 4.6),
    _vit("deit_base_patch16_224", 768, 12, 12, _DEIT + "deit_base_patch16_224-b5f2ef4d.pth", 81.8, 17.6),
    _vit("deit_base_patch16_384", 768, 12, 12, _DEIT + "deit_base_patch16_384-8de9b5d1.pth", 82.9, 55.5,
         img_size=384, crop_pct=1.0),
    # ViT (Dosovitskiy et al. 2021), timm's AugReg weights (ImageNet-21k pre-training)
    _vit("vit_tiny_patch16_224", 192, 12, 3, _HF.format("vit_tiny_patch16_224.augreg_in21k_ft_in1k"), 75.5,
         mean=_HALF, std=_HALF, crop_pct=0.9),
    _vit("vit_small_patch16_224", 384, 12, 6, _HF.format("vit_small_patch16_224.augreg_in21k_ft_in1k"), 81.4,
         mean=_HALF, std=_HALF, crop_pct=0.9),
    _vit("vit_base_patch16_224", 768, 12, 12, _HF.format("vit_base_patch16_224.augreg2_in21k_ft_in1k"), 85.1,
         mean=_HALF, std=_HALF, crop_pct=0.9),
    _vit("vit_base_patch16_384", 768, 12, 12, _HF.format("vit_base_patch16_384.augreg_in21k_ft_in1k"), 86.0,
         img_size=384, mean=_HALF, std=_HALF, crop_pct=1.0),
    _vit("vit_large_patch16_224", 1024, 24, 16, _HF.format("vit_large_patch16_224.augreg_in21k_ft_in1k"), 85.8,
         mean=_HALF, std=_HALF, crop_pct=0.9),
]}


def list_models(family: str | None = None) -> list[str]:
    """Registered names, optionally only one family ("t2t" or "vit")."""
    return [n for n, c in MODELS.items() if family is None or c.family == family]


def get_config(name: str) -> ModelConfig:
    if name not in MODELS:
        close = [n for n in MODELS if name.split("_")[0] in n] or list(MODELS)
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(close)}")
    return MODELS[name]


def build_model(name: str, img_size: int | None = None, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """The architecture of `name` with fresh weights; `overrides` replace any constructor argument."""
    cfg = get_config(name)
    img_size = img_size or cfg.img_size
    if img_size % 16:
        raise ValueError(f"img_size must be a multiple of 16 (the token grid is img_size / 16), got {img_size}")
    cls = T2TViT if cfg.family == "t2t" else VisionTransformer
    model = cls(img_size=img_size, num_classes=num_classes, **{**cfg.args, **overrides})
    model.default_cfg = {
        "name": name, "family": cfg.family, "mean": cfg.mean, "std": cfg.std, "crop_pct": cfg.crop_pct,
        "img_size": img_size, "url": cfg.url, "top1": cfg.top1, "num_classes": num_classes,
    }
    model.class_names = None
    return model
