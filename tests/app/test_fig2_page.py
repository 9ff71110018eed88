"""Feature richness page: Fig. 2 as the official notebook draws it (analysis.paper_fig2)."""


from analysis.paper_fig2 import invalid_summary, notebook_image, paper_feature_maps
from app import compute
from tests.app.test_pages import boxes, charts, run


def test_feature_page_draws_fig2_as_the_notebook_does() -> None:
    at = run("views/4_feature_richness.py")
    ctx = at.session_state[compute.CTX_KEY]
    figs = charts(at)
    assert {"fr_nb_mosaic_T2T-ViT", "fr_nb_mosaic_ViT"} <= set(figs)
    assert at.radio(key="fr_nb_size").value == 512 and at.radio(key="fr_nb_inputs").value == "notebook"

    at.slider(key="fr_threshold").set_value(0.5)
    at.radio(key="fr_nb_size").set_value(224)
    at.radio(key="fr_nb_depth").set_value(2)
    run(at=at)
    metrics = [m.value for m in at.metric if m.label == "Invalid channels on these maps"]
    captions = [c.value for c in at.caption if "of the 36 shown (red frames)" in c.value]
    for lm, value, caption in zip(ctx.models, metrics, captions, strict=True):
        maps = paper_feature_maps(lm.model, notebook_image(ctx.image.image, 224).to(lm.device), 2)
        summary = invalid_summary(maps, 36, 0.5)
        assert value.startswith(f"{int(summary['count'][0])} of {maps.shape[1]} (")
        assert caption.startswith(f"{int(summary['shown_count'][0])} of the 36 shown")
        fig = charts(at)[f"fr_nb_mosaic_{lm.role}"]
        assert len(boxes(fig, "marked")) == int(summary["shown_count"][0])
        assert "block 2<br>224 px, first 36 of" in fig["layout"]["title"]["text"]
        assert "14×14 tokens" in fig["layout"]["title"]["text"]
    text = " ".join(m.value for m in at.markdown if "by the notebook's protocol" in m.value)
    assert "The paper's claim" in text and "threshold 0.5" in text

    before = charts(at)["fr_nb_mosaic_ViT"]["data"][0]["source"]
    at.radio(key="fr_nb_inputs").set_value("model")
    run(at=at)
    assert charts(at)["fr_nb_mosaic_ViT"]["data"][0]["source"] != before
