"""One registry of named model configurations: `create_model(name)` and `list_models()`.

Each entry says how to build the architecture and, for a released checkpoint, how its reference
evaluates it: file and dictionary, the backbone attention scale, the eval transform, the dataset
and its class names, and the top-1 the file should reach with the source of that number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from torch import nn

from t2t.t2t_vit import T2TViT
from t2t.vit import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# official transfer_learning.py's Normalize (the often-quoted CIFAR-10 statistics, used for CIFAR-100 too)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
T2T_RELEASE = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"
ASSETS = Path(__file__).parent / "assets"

#: dataset -> file of its class names (line i = class index i) and how many there are
DATASETS: dict[str, tuple[str, int]] = {
    "ImageNet-1k": ("imagenet_classes.txt", 1000),
    "CIFAR-10": ("cifar10_classes.txt", 10),
    "CIFAR-100": ("cifar100_classes.txt", 100),
}
#: what each dataset's stated top-1 is measured on
EVAL_SETS = {"ImageNet-1k": "the 50,000 ImageNet-1k validation images", "CIFAR-10": "the 10,000 CIFAR-10 test images",
             "CIFAR-100": "the 10,000 CIFAR-100 test images"}
#: how each release family's files are read (see `t2t.weights`): the format and the dictionary loaded
T2T_FILE = "training checkpoint (.pth.tar): `state_dict_ema` (EMA, as main.py --eval_checkpoint), else `state_dict`"
CIFAR_FILE = "`{'net': state_dict ('module.' keys), 'acc', 'epoch'}` of transfer_learning.py: `net`"
TL_FILE = ("not opened here; read as the T2T-ViT files (`state_dict_ema`, else `state_dict`); `aux_head.*` "
           "kept and used when present (TokenLabeling's eval), else the plain T2T-ViT-24")
DEIT_FILE = "`.pth`: `{'model': state_dict}`: `model`"
VIT_FILE = "`.safetensors`: a flat state dict (timm's names)"
T2T_SOURCE = "official README (paper Tables 2-3)"
HEAD_DIM_RULE = "head_dim ** -0.5"


@cache
def dataset_class_names(dataset: str) -> tuple[str, ...]:
    """The class names of a dataset the registry knows ("ImageNet-1k", "CIFAR-10", "CIFAR-100"), in index order."""
    if dataset not in DATASETS:
        raise KeyError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    file, count = DATASETS[dataset]
    names = tuple(line.strip() for line in (ASSETS / file).read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != count:
        raise RuntimeError(f"{file} has {len(names)} names, expected {count}")
    return names


@dataclass(frozen=True)
class ModelConfig:
    """Architecture arguments plus what it takes to use, evaluate and compare the released weights.

    The backbone attention scale is not an argument: every model uses `head_dim ** -0.5`
    (`attention_scale`), as the official evaluation builds its models (`qk_scale=None`).
    """

    name: str
    family: str  # "t2t" or "vit"
    args: dict[str, Any]
    url: str | None = None  # the released weights
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.9
    img_size: int = 224
    top1: float | None = None  # top-1 (%) of the released weights on `dataset`'s test / validation set
    paper_gmacs: float | None = None  # MACs at img_size, as the paper's table gives them
    interpolation: str = "bicubic"  # of the eval resize
    dataset: str = "ImageNet-1k"  # what the released head classifies
    num_classes: int = 1000
    checkpoint: str | None = None  # the released file's format and the dictionary loaded
    top1_source: str | None = None  # where `top1` comes from
    token_labeling: bool = False  # may hold TokenLabeling's auxiliary token head (`aux_head.*`)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str | None:
        """The released file's name (a Hugging Face file with its repository: timm/<repo>/model.safetensors)."""
        if not self.url:
            return None
        if "/resolve/" in self.url:
            repo, rest = self.url.split("huggingface.co/", 1)[1].split("/resolve/", 1)
            return f"{repo}/{rest.rsplit('/', 1)[-1]}"
        return self.url.rsplit("/", 1)[-1]


def attention_scale(cfg: ModelConfig) -> float:
    """The backbone attention scale the registry builds `cfg` with: head_dim ** -0.5."""
    return (cfg.args["embed_dim"] // cfg.args["num_heads"]) ** -0.5


def _t2t(name: str, tokens_type: str, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
         url: str | None, top1: float | None, gmacs: float | None, img_size: int = 224,
         source: str | None = T2T_SOURCE, **kw: Any) -> ModelConfig:
    # No qk_scale: head_dim ** -0.5, as the official evaluation (main.py --eval_checkpoint, and the README's
    # `t2t_vit_14()` + load_for_transfer_learning) builds every model, with pretrained=False. Only the official
    # builders' pretrained=True branch sets embed_dim ** -0.5, and it cannot load weights (empty URLs).
    args = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    checkpoint = kw.pop("checkpoint", T2T_FILE if url else None)
    return ModelConfig(name, "t2t", args, url and T2T_RELEASE + url, img_size=img_size, top1=top1,
                       paper_gmacs=gmacs, checkpoint=checkpoint, top1_source=url and source, **kw)


def _cifar(name: str, embed_dim: int, depth: int, num_heads: int, dataset: str, file: str,
           top1: float) -> ModelConfig:
    """An official CIFAR fine-tune of a Performer T2T-ViT: transfer_learning.py's eval transform, Resize(224)
    of the whole image (bilinear, torchvision's default), no crop, CIFAR mean / std."""
    args = dict(tokens_type="performer", embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=3.0)
    return ModelConfig(name, "t2t", args, T2T_RELEASE + file, CIFAR_MEAN, CIFAR_STD, 1.0, 224, top1,
                       interpolation="bilinear", dataset=dataset, num_classes=DATASETS[dataset][1],
                       checkpoint=CIFAR_FILE, top1_source="official README (section 5), test set")


def _vit(name: str, embed_dim: int, depth: int, num_heads: int, url: str, top1: float,
         gmacs: float | None = None, img_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
         crop_pct: float = 0.875, checkpoint: str = DEIT_FILE, source: str = "") -> ModelConfig:
    args = dict(patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True)
    return ModelConfig(name, "vit", args, url, mean, std, crop_pct, img_size, top1, gmacs, checkpoint=checkpoint,
                       top1_source=source)


_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_DEIT = "https://dl.fbaipublicfiles.com/deit/"
_HALF = (0.5, 0.5, 0.5)
_DEIT_LOG = "DeiT README, its main.py --eval log: {}"
_AUGREG = "timm's ImageNet-val results (model card)"
_PR = "; timm PR #2426 measured {} on ImageNet-val with head_dim ** -0.5"

MODELS: dict[str, ModelConfig] = {c.name: c for c in [
    # T2T-ViT (Yuan et al. 2021, Tables 2 and 3 and the official README)
    _t2t("t2t_vit_7", "performer", 256, 7, 4, 2.0, "71.7_T2T_ViT_7.pth.tar", 71.7, 1.1,
         source=T2T_SOURCE + _PR.format("71.676")),
    _t2t("t2t_vit_10", "performer", 256, 10, 4, 2.0, "75.2_T2T_ViT_10.pth.tar", 75.2, 1.5),
    _t2t("t2t_vit_12", "performer", 256, 12, 4, 2.0, "76.5_T2T_ViT_12.pth.tar", 76.5, 1.8),
    _t2t("t2t_vit_14", "performer", 384, 14, 6, 3.0, "81.5_T2T_ViT_14.pth.tar", 81.5, 4.8,
         source=T2T_SOURCE + "; its main.py --eval_checkpoint log: 81.500 / 95.666" + _PR.format("81.500 / 95.666")),
    _t2t("t2t_vit_14_384", "performer", 384, 14, 6, 3.0, "83.3_T2T_ViT_14.pth.tar", 83.3, None, img_size=384),
    _t2t("t2t_vit_19", "performer", 448, 19, 7, 3.0, "81.9_T2T_ViT_19.pth.tar", 81.9, 8.5),
    _t2t("t2t_vit_24", "performer", 512, 24, 8, 3.0, "82.3_T2T_ViT_24.pth.tar", 82.3, 13.8),
    _t2t("t2t_vit_24_token_labeling", "performer", 512, 24, 8, 3.0, "84.2_T2T_ViT_24.pth.tar", 84.2, None,
         source="official README (\"T2T-ViT-24, Token Labeling\", 65M params)", token_labeling=True,
         checkpoint=TL_FILE),
    _t2t("t2t_vit_t_14", "transformer", 384, 14, 6, 3.0, "81.7_T2T_ViTt_14.pth.tar", 81.7, 6.1),
    _t2t("t2t_vit_t_19", "transformer", 448, 19, 7, 3.0, "82.4_T2T_ViTt_19.pth.tar", 82.4, 9.8),
    _t2t("t2t_vit_t_24", "transformer", 512, 24, 8, 3.0, "82.6_T2T_ViTt_24.pth.tar", 82.6, 15.0,
         source=T2T_SOURCE + _PR.format("82.554")),
    # the official transfer to CIFAR (README section 5, transfer_learning.py); the misspelled name is the real URL
    _cifar("t2t_vit_14_cifar10", 384, 14, 6, "CIFAR-10", "cifar10_t2t-vit_14_98.3.pth", 98.3),
    _cifar("t2t_vit_14_cifar100", 384, 14, 6, "CIFAR-100", "cirfar100_t2t-vit-14_88.4.pth", 88.4),
    _cifar("t2t_vit_19_cifar10", 448, 19, 7, "CIFAR-10", "cifar10_t2t-vit_19_98.4.pth", 98.4),
    _cifar("t2t_vit_19_cifar100", 448, 19, 7, "CIFAR-100", "cifar100_t2t-vit-19_89.0.pth", 89.0),
    # the CNN-inspired variants of the paper's ablation (no released weights)
    _t2t("t2t_vit_14_resnext", "performer", 384, 14, 32, 3.0, None, None, None),
    _t2t("t2t_vit_14_wide", "performer", 768, 4, 12, 3.0, None, None, None),
    # DeiT (Touvron et al. 2021), ImageNet-1k only, as T2T-ViT
    _vit("deit_tiny_patch16_224", 192, 12, 3, _DEIT + "deit_tiny_patch16_224-a1311bcf.pth", 72.2, 1.3,
         source=_DEIT_LOG.format("72.202")),
    _vit("deit_small_patch16_224", 384, 12, 6, _DEIT + "deit_small_patch16_224-cd65a155.pth", 79.8, 4.6,
         source="DeiT paper; " + _DEIT_LOG.format("79.854")),
    _vit("deit_base_patch16_224", 768, 12, 12, _DEIT + "deit_base_patch16_224-b5f2ef4d.pth", 81.8, 17.6,
         source=_DEIT_LOG.format("81.846")),
    _vit("deit_base_patch16_384", 768, 12, 12, _DEIT + "deit_base_patch16_384-8de9b5d1.pth", 82.9, 55.5,
         img_size=384, crop_pct=1.0, source=_DEIT_LOG.format("82.890")),
    # ViT (Dosovitskiy et al. 2021), timm's AugReg weights (ImageNet-21k pre-training)
    _vit("vit_tiny_patch16_224", 192, 12, 3, _HF.format("vit_tiny_patch16_224.augreg_in21k_ft_in1k"), 75.5,
         mean=_HALF, std=_HALF, crop_pct=0.9, checkpoint=VIT_FILE, source=_AUGREG),
    _vit("vit_small_patch16_224", 384, 12, 6, _HF.format("vit_small_patch16_224.augreg_in21k_ft_in1k"), 81.4,
         mean=_HALF, std=_HALF, crop_pct=0.9, checkpoint=VIT_FILE, source=_AUGREG),
    _vit("vit_base_patch16_224", 768, 12, 12, _HF.format("vit_base_patch16_224.augreg2_in21k_ft_in1k"), 85.1,
         mean=_HALF, std=_HALF, crop_pct=0.9, checkpoint=VIT_FILE, source=_AUGREG),
    _vit("vit_base_patch16_384", 768, 12, 12, _HF.format("vit_base_patch16_384.augreg_in21k_ft_in1k"), 86.0,
         img_size=384, mean=_HALF, std=_HALF, crop_pct=1.0, checkpoint=VIT_FILE, source=_AUGREG),
    _vit("vit_large_patch16_224", 1024, 24, 16, _HF.format("vit_large_patch16_224.augreg_in21k_ft_in1k"), 85.8,
         mean=_HALF, std=_HALF, crop_pct=0.9, checkpoint=VIT_FILE, source=_AUGREG),
]}


def list_models(family: str | None = None) -> list[str]:
    """Registered names, optionally only one family ("t2t" or "vit")."""
    return [n for n, c in MODELS.items() if family is None or c.family == family]


def get_config(name: str) -> ModelConfig:
    if name not in MODELS:
        close = [n for n in MODELS if name.split("_")[0] in n] or list(MODELS)
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(close)}")
    return MODELS[name]


def build_model(name: str, img_size: int | None = None, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """The architecture of `name` with fresh weights; `overrides` replace any constructor argument.

    num_classes None: the released head's (1000, or 10 / 100 for the CIFAR releases). A
    `token_labeling` entry gets TokenLabeling's auxiliary token head unless `aux_head=False`.
    `default_cfg` records the eval transform, the release's dataset (`create_model` sets it to the
    dataset of the weights in use, None for fresh ones) and the attention scale in use (`qk_scale`,
    and `qk_scale_rule`: how it was chosen).
    """
    cfg = get_config(name)
    img_size = img_size or cfg.img_size
    num_classes = cfg.num_classes if num_classes is None else num_classes
    if img_size % 16:
        raise ValueError(f"img_size must be a multiple of 16 (the token grid is img_size / 16), got {img_size}")
    args = {**cfg.args, **({"aux_head": True} if cfg.token_labeling else {}), **overrides}
    if args.get("qk_scale") is None:
        args.pop("qk_scale", None)
    cls = T2TViT if cfg.family == "t2t" else VisionTransformer
    model = cls(img_size=img_size, num_classes=num_classes, **args)
    model.default_cfg = {
        "name": name, "family": cfg.family, "mean": cfg.mean, "std": cfg.std, "crop_pct": cfg.crop_pct,
        "interpolation": cfg.interpolation, "img_size": img_size, "url": cfg.url, "top1": cfg.top1,
        "top1_source": cfg.top1_source, "dataset": cfg.dataset, "num_classes": num_classes,
        "qk_scale": model.blocks[0].attn.scale if len(model.blocks) else None,
        "qk_scale_rule": f"qk_scale={args['qk_scale']} given" if "qk_scale" in args else HEAD_DIM_RULE,
        "token_labeling": ("cls+aux" if getattr(model, "aux_head", None) is not None else "cls")
        if cfg.token_labeling else None,
    }
    model.class_names = None
    return model
