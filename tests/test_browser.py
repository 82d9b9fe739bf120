"""Feature browser: folder discovery, sorting, static HTML pages (audio, images, stats, labels) and the widget."""
import base64, io, json, re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from musicsae.browser import (SORT_KEYS, FeatureBrowser, toy_run, feature_html, find_saes, load_feature_set,
                              run_layout, sort_features)
from musicsae.core import RunLayout

torch.set_num_threads(1)
N_FRAMES, FRAME_RATE, OUT_SR = 20, 50.0, 32000  # write_examples writes 32 kHz clips


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "A run folder with two analysed SAEs on layer 2 and one on layer 6, example audio and an acts card."
    r = tmp_path_factory.mktemp("run")
    toy_run(r, n_tracks=40, n_frames=N_FRAMES, expansion=4, k=4, layer=2)
    toy_run(r, n_tracks=40, n_frames=N_FRAMES, expansion=2, k=2, layer=2, seed=1)
    toy_run(r, n_tracks=40, n_frames=N_FRAMES, expansion=2, k=2, layer=6, seed=2)
    (r / "acts" / "L2").mkdir(parents=True)
    (r / "acts" / "L2" / "card.json").write_text(json.dumps({"model": "planted-model", "frame_rate": FRAME_RATE}))
    return r


def _labels(run, sae, recs):
    p = run / "labels" / f"{sae}.jsonl"; p.parent.mkdir(exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _rec(f, sae, cands):
    return {"feature": int(f), "sae": sae, "candidates": cands, "best": max(cands, key=lambda c: c["clap"])}


def test_find_saes(run):
    s = find_saes(run)
    assert list(s.sae) == ["L2_ef2_k2", "L2_ef4_k4", "L6_ef2_k2"]
    assert s.set_index("sae").model.to_dict() == {"L2_ef2_k2": "planted-model", "L2_ef4_k4": "planted-model",
                                                  "L6_ef2_k2": run.name}  # no card for L6: the run's name
    assert find_saes(run / "features").equals(s)
    with pytest.raises(FileNotFoundError, match="no features folder"): find_saes(run / "missing")
    (run / "empty" / "features").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no SAE feature folders"): find_saes(run / "empty")


def test_a_config_name_reads_its_run_layout(tmp_path, monkeypatch):
    "A config name browses RunLayout(config): features, labels and the acts card of that run; nothing there names 05."
    monkeypatch.setenv("MUSICSAE_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run 05_features first"): find_saes("cfg")
    lay = RunLayout("cfg")
    assert run_layout(lay.root) == lay and run_layout(tmp_path / "elsewhere").labels("L2_ef4_k4") == tmp_path / "elsewhere" / "labels" / "L2_ef4_k4.jsonl"
    toy_run(lay.root, n_tracks=40, n_frames=N_FRAMES, layer=2)
    lay.acts(2).mkdir(parents=True); (lay.acts(2) / "card.json").write_text(json.dumps({"model": "m", "frame_rate": 25.0}))
    s = find_saes("cfg")
    assert s.sae.tolist() == ["L2_ef4_k4"] and s.path[0] == str(lay.features("L2_ef4_k4")) and s.model[0] == "m"
    f = int(load_feature_set(s.path[0]).table.feature.iloc[0])
    lay.labels_root.mkdir(); _labels(lay.root, "L2_ef4_k4", [_rec(f, "L2_ef4_k4", [dict(label="hum", source="x", score=1.0, clap=0.3)])])
    fs = load_feature_set(s.path[0])
    assert fs.has_labels and fs.frame_rate == 25.0 and FeatureBrowser("cfg", n=1).static_html(f).count("hum") >= 1


def test_load_feature_set(run):
    fs = load_feature_set(run / "features" / "L2_ef4_k4")
    full = pd.read_parquet(run / "features" / "L2_ef4_k4" / "features.parquet")
    assert fs.table.feature.tolist() == full.feature[full.status == "retained"].tolist() and len(fs.table) > 5
    assert fs.frame_rate == FRAME_RATE and not fs.has_labels and fs.table.clap.isna().all()
    assert all(len(fs.frames[(f, r)]) == N_FRAMES for f, r in zip(fs.examples.feature, fs.examples["rank"]))
    bad = run / "features" / "L9_ef1_k1"; bad.mkdir(); full.to_parquet(bad / "features.parquet")
    try:
        with pytest.raises(FileNotFoundError, match="examples.parquet"): load_feature_set(bad)
    finally:
        (bad / "features.parquet").unlink(); bad.rmdir()


def test_corrupt_labels_name_the_file(run, tmp_path):
    p = tmp_path / "bad.jsonl"; p.write_text('{"feature": 0}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"): load_feature_set(run / "features" / "L2_ef4_k4", labels_path=p)


def _reference_order(table, col):
    "Descending by col, NaN last, ties by feature id: written independently of sort_features."
    v = dict(zip(table.feature, table[col]))
    return sorted(v, key=lambda f: (np.isnan(v[f]), -v[f] if not np.isnan(v[f]) else 0, f))


def test_sort_keys(run, tmp_path):
    sae = "L2_ef4_k4"; d = run / "features" / sae
    fs0 = load_feature_set(d)
    feats = fs0.table.feature.tolist()
    claps = {feats[3]: 0.5, feats[0]: 0.9, feats[5]: 0.5, feats[1]: -0.2}
    lp = tmp_path / f"{sae}.jsonl"
    lp.write_text("".join(json.dumps(_rec(f, sae, [{"label": f"l{f}", "source": "demo_tagger:x", "score": 0.3, "clap": c}])) + "\n"
                          for f, c in claps.items()))
    fs = load_feature_set(d, labels_path=lp)
    for name, col in SORT_KEYS.items():
        got = sort_features(fs, name)
        assert got == _reference_order(fs.table, col) == sort_features(fs, col), name
        assert sorted(got) == sorted(feats)
    # label CLAP: the labelled ones first by score, the tie (0.5) by feature id, the unlabelled after by id
    tie = sorted([feats[3], feats[5]])
    assert sort_features(fs, "label CLAP score")[:4] == [feats[0], *tie, feats[1]]
    assert sort_features(fs, "label CLAP score")[4:] == sorted(set(feats) - set(claps))
    r = fs.table.set_index("feature").rate.loc[sort_features(fs, "rate")].to_numpy()
    assert (np.diff(r) <= 0).all() and r[0] == fs0.table.rate.max()
    with pytest.raises(KeyError, match="choose one of"): sort_features(fs, "loudness")


def _audio_srcs(page):
    return re.findall(r"""<audio[^>]*src=['"]data:audio/wav;base64,([A-Za-z0-9+/=]+)['"]""", page)


def _img_srcs(page):
    return re.findall(r"""<img[^>]*src=['"]data:image/png;base64,([A-Za-z0-9+/=]+)['"]""", page)


def test_feature_html(run):
    sae = "L2_ef4_k4"; d = run / "features" / sae
    fs = load_feature_set(d)
    f = sort_features(fs, "rate")[0]
    ex = fs.examples[fs.examples.feature == f].sort_values("rank")
    page = feature_html(fs, f, n=10)
    audios, imgs = _audio_srcs(page), _img_srcs(page)
    assert len(audios) == len(imgs) == len(ex) == page.count("<audio") >= 2
    for rank, b64 in zip(ex["rank"], audios):
        a, sr = sf.read(io.BytesIO(base64.b64decode(b64)), dtype="float32")
        ref, _ = sf.read(d / "examples" / str(f) / f"{rank}.wav", dtype="float32")
        assert sr == OUT_SR and len(a) == round(N_FRAMES / FRAME_RATE * OUT_SR) and np.array_equal(a, ref)
        assert np.abs(a).max() > 0.1  # the tone is there
    import matplotlib.image as mpimg
    im = mpimg.imread(io.BytesIO(base64.b64decode(imgs[0])), format="png")
    assert im.ndim == 3 and im.shape[0] > 100 and im.shape[1] > 200 and im[..., :3].std() > 0.05
    row = fs.table.set_index("feature").loc[f]
    for v in (f"{row['rate']:.4g}", f"{row['mean_act']:.4g}", f"{row['beta']:.4g}", f"<td>{row['count']}</td>", "retained"):
        assert v in page, v
    for tid, mu in zip(ex.track_id, ex.mean_act): assert tid in page and f"mean {mu:.4g}" in page
    assert "<h5>labels" not in page
    assert len(_audio_srcs(feature_html(fs, f, n=2))) == 2
    linked = feature_html(fs, f, n=2, audio="link", images=False)
    assert not _img_srcs(linked) and linked.count(f"/examples/{f}/0.wav'") == 1
    with pytest.raises(KeyError, match="not a retained feature"): feature_html(fs, 10**6)


def test_feature_html_labels(run):
    sae = "L2_ef2_k2"; d = run / "features" / sae
    f = load_feature_set(d).table.feature.iloc[0]
    lp = _labels(run, sae, [_rec(f, sae, [{"label": "low <drone>", "source": "gemini", "score": 1.0, "clap": 0.123},
                                          {"label": "bright piano", "source": "demo_tagger:instrument", "score": 0.61, "clap": 0.456}])])
    try:
        fs = load_feature_set(d)
        assert fs.has_labels and fs.table.set_index("feature").label[f] == "bright piano"
        page = feature_html(fs, f)
        assert "<h5>labels" in page and "feature %d · bright piano" % f in page
        assert "low &lt;drone&gt;" in page and "<drone>" not in page  # escaped
        assert page.index("bright piano</td>") < page.index("low &lt;drone&gt;")  # by CLAP, best first
        for v in ("0.456", "0.123", "0.61", "demo_tagger:instrument"): assert v in page
    finally:
        lp.unlink()


def test_widget_drives_page(run):
    _labels(run, "L2_ef4_k4", [])  # an empty labels file: still no label sort
    b = FeatureBrowser(run, n=3)
    assert list(b.model.options) == sorted({"planted-model", run.name}) and b.layer.options == (2,)
    assert b.sae.value == "L2_ef2_k2" and "label CLAP score" not in b.sort.options
    fs = b.features
    order = sort_features(fs, "rate")
    assert [v for _, v in b.feature.options] == order and b.feature.value == order[0]
    first = b.page.value
    assert f"feature {order[0]}" in first and first.count("<audio") == min(3, (fs.examples.feature == order[0]).sum())
    b.feature.value = order[1]  # as a user picking from the dropdown
    assert f"feature {order[1]}<" in b.page.value and b.page.value != first
    assert b.page.value == b.static_html() == b._repr_html_() == feature_html(fs, order[1], n=3)
    b.sort.value = "mean activation"
    assert [v for _, v in b.feature.options] == sort_features(fs, "mean_act") and b.feature.value == order[1]
    b.sae.value = "L2_ef4_k4"
    assert b.features.sae == "L2_ef4_k4" and "L2_ef4_k4 · feature" in b.page.value
    assert [v for _, v in b.feature.options] == sort_features(b.features, "mean_act")
    b.model.value = run.name
    assert b.layer.value == 6 and b.sae.value == "L6_ef2_k2" and "L6_ef2_k2 · feature" in b.page.value
    bundle = b._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["text/html"] == b.static_html()


def test_widget_label_sort(run):
    sae = "L2_ef2_k2"
    feats = load_feature_set(run / "features" / sae).table.feature.tolist()
    lp = _labels(run, sae, [_rec(feats[-1], sae, [{"label": "x", "source": "gemini", "score": 1.0, "clap": 0.3}])])
    try:
        b = FeatureBrowser(run, n=1, sort="clap")
        assert b.sort.value == "label CLAP score" and b.feature.value == feats[-1]
        assert b.feature.options[0][0].endswith(" · x") and "<h5>labels" in b.page.value
    finally:
        lp.unlink()


def test_static_page_survives_nbconvert(run, tmp_path):
    """An executed notebook showing the browser keeps a feature page after nbconvert to HTML: in the saved widget
    state (rendered by the widget HTML manager), in the output's text/html fallback, and as an explicit static cell."""
    nbformat = pytest.importorskip("nbformat"); nbclient = pytest.importorskip("nbclient")
    from nbconvert import HTMLExporter
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"from musicsae.browser import FeatureBrowser\nb = FeatureBrowser({str(run)!r}, n=2)\nb"),
        nbformat.v4.new_code_cell("from IPython.display import HTML\nHTML(b.static_html())")])
    try: nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    except Exception as e: pytest.skip(f"no Jupyter kernel here: {e}")
    live, static = nb.cells[0].outputs[0]["data"], nb.cells[1].outputs[0]["data"]["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in live and live["text/html"] == static
    assert len(_audio_srcs(static)) == 2 and len(_img_srcs(static)) == 2
    state = json.dumps(nb.metadata.widgets["application/vnd.jupyter.widget-state+json"])
    assert "musicsae-feature" in state and "data:audio/wav;base64," in state
    body, _ = HTMLExporter().from_notebook_node(nb)
    assert len(_audio_srcs(body)) == 2 and len(_img_srcs(body)) == 2 and "musicsae-feature" in body
