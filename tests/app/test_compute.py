"""app/compute.py: the pair's traces of a new image, one of them on another core."""

from __future__ import annotations

import pytest
import torch

import t2t
from app import compute
from app.images import synthetic_image
from app.jobs import QUICK
from app.models import T2T_DEFAULT, VIT_DEFAULT, LoadedModel
from t2t.loading import load_model


@pytest.fixture(scope="module")
def pair() -> tuple[LoadedModel, LoadedModel]:
    return tuple(LoadedModel(role, name, "embedded", "", "cpu", load_model(name, "embedded", "cpu",
                                                                            match_architecture=False))
                 for role, name in (("T2T-ViT", T2T_DEFAULT), ("ViT", VIT_DEFAULT)))  # type: ignore[return-value]


def submissions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The labels of the quick queue's jobs submitted from now on (the jobs still run)."""
    labels: list[str] = []
    submit = QUICK.submit

    def spy(key, owner, label, fn):
        labels.append(label)
        return submit(key, owner, label, fn)

    monkeypatch.setattr(QUICK, "submit", spy)
    return labels


@pytest.mark.parametrize("first", [0, 1])
def test_a_new_image_on_the_cpu_traces_the_other_model_in_the_quick_queue(pair, monkeypatch, first):
    image = synthetic_image(1, 900 + first)  # never traced before in this process
    ctx = compute.Context(*pair, image, "cpu")
    labels = submissions(monkeypatch)
    asked, other = pair[first], pair[1 - first]
    ctx.trace(asked)
    assert labels == [f"Trace of {other.name}"]  # started beside the first trace
    got = ctx.trace(other)  # the job's value (or computed here if the job had not started)
    assert labels == [f"Trace of {other.name}"]  # nothing more: the pair is traced
    with torch.no_grad():
        direct = t2t.trace(other.model, compute.preprocessed(other, image).tensor, attention=True)
    assert torch.equal(got["logits"], direct["logits"])
    assert torch.equal(got["blocks.0"], direct["blocks.0"])
    assert compute.is_traced(other, image) and compute.is_traced(asked, image)


def test_a_cached_trace_or_a_gpu_session_starts_nothing(pair, monkeypatch):
    image = synthetic_image(2, 902)
    ctx = compute.Context(*pair, image, "cpu")
    ctx.trace(pair[0]), ctx.trace(pair[1])
    labels = submissions(monkeypatch)
    ctx.trace(pair[0]), ctx.trace(pair[1])  # both cached
    assert labels == []
    gpu_ctx = compute.Context(*pair, synthetic_image(2, 903), "cuda")  # a GPU computes one trace at a time
    gpu_ctx.trace(pair[0])  # (the models are on the CPU here: only the decision is tested)
    assert labels == []
