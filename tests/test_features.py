"""Feature statistics (paper §3.3), the filter's boundaries, top examples with ties, β, example audio and
concept recovery, on a real ActivationStore written from a planted store and real (tiny) TopK SAEs."""
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import soundfile as sf
import torch

from musicsae.activations import ActivationStore, StoreWriter
from musicsae.core import RunLayout, read_results
from musicsae.features import (PAPER_TABLE1, FeatureStats, NoConcepts, PlantedStore, analyze_sae, auroc_matrix,
                               concept_recovery, feature_beta, feature_stats, filter_features, load_features, parse_sae_id,
                               random_sae_like, run_features, run_inputs, table1, top_examples, with_paper)
from musicsae.sae import TopKSAE

torch.set_num_threads(1)


def write_store(tmp_path, n_tracks=60, layer=2, **kw):
    ps = PlantedStore(n_tracks=n_tracks, layer=layer, **kw)
    w = StoreWriter(tmp_path / f"L{layer}", dict(format=1, model="planted", layer=layer, d_model=ps.d_model, frame_rate=50.0,
                                                 dtype="float16", manifest_hash="h", n_manifest=n_tracks), shard_tokens=300)
    for t, s in zip(ps.ids, ps.splits):
        w.add(t, s, ps.track(t))
    w.close()
    return ActivationStore(tmp_path / f"L{layer}"), ps


def tiny_sae(d=16, n=64, k=3, seed=0):
    sae = TopKSAE(d, n, k, layer=2, seed=seed)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-1.5, 0.5, n))  # some latents rarely clear ReLU: a mix of rates
    return sae


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("acts"))


def dense_reference(store, sae, split):
    with torch.no_grad():
        Z = [sae.encode_dense(store.track(t)) for t in store.track_ids(split)]
    return torch.stack([z.mean(0) for z in Z]).numpy(), torch.stack([z.amax(0) for z in Z]).numpy(), Z


@pytest.mark.parametrize("max_elems", [1, 20 * 64 * 3 + 5, 2**24])
def test_stats_equal_dense_reference(store, max_elems):
    st, _ = store
    sae = tiny_sae()
    fs = feature_stats(st, sae, split="val", device="cpu", max_elems=max_elems)
    mu, mx, Z = dense_reference(st, sae, "val")
    assert fs.track_ids == st.track_ids("val") and fs.n_features == 64
    np.testing.assert_allclose(fs.mu.toarray(), mu, atol=1e-6)
    np.testing.assert_allclose(fs.mx.toarray(), mx, atol=1e-6)
    delta = mx > 0
    assert (fs.counts == delta.sum(0)).all()
    np.testing.assert_allclose(fs.rate, delta.mean(0))
    assert 0 < fs.mu.nnz < mu.size and fs.mu.nnz == np.count_nonzero(mx)  # sparse: only (track, feature) pairs that fired
    assert (fs.n_frames == [len(z) for z in Z]).all()
    np.testing.assert_allclose(fs.x_mean, np.stack([st.track(t).mean(0).numpy() for t in fs.track_ids]), atol=1e-6)
    rates = set(fs.rate.round(3))
    assert len(rates) > 5  # the fixture SAE gives a spread of rates, not all-or-nothing


def test_stats_tau_and_roundtrip(store, tmp_path):
    st, _ = store
    sae = tiny_sae()
    fs = feature_stats(st, sae, split="val", device="cpu", tau=0.5)
    _, mx, _ = dense_reference(st, sae, "val")
    assert (fs.counts == (mx > 0.5).sum(0)).all()
    fs.save(tmp_path / "s.npz")
    g = FeatureStats.load(tmp_path / "s.npz")
    assert g.track_ids == fs.track_ids and g.tau == 0.5
    assert (g.mu != fs.mu).nnz == 0 and (g.mx != fs.mx).nnz == 0 and np.array_equal(g.x_mean, fs.x_mean)
    with pytest.raises(ValueError, match="tau"):
        feature_stats(st, sae, tau=-1.0, device="cpu")
    with pytest.raises(FileNotFoundError, match="nothere"):
        FeatureStats.load(tmp_path / "nothere.npz")


def test_filter_hand_computed_boundaries():
    # N=400: θ_min·N = 4, θ_max·N = 100; exactly-at-threshold rates are kept
    f = filter_features(np.array([0, 1, 3, 4, 5, 99, 100, 101, 400]), 400)
    assert list(f.status) == ["inactive", "obscure", "obscure", "retained", "retained", "retained", "retained",
                              "ubiquitous", "ubiquitous"]
    # N=100: count 1 is r = 0.01 exactly (kept), count 25 is r = 0.25 exactly (kept), 26 is not
    assert list(filter_features(np.array([1, 25, 26]), 100).status) == ["retained", "retained", "ubiquitous"]
    # N where θ·N is not exact in binary floating point (0.01·300, 0.25·300 = 75; 0.07·100 = 7.000000000000001)
    assert list(filter_features(np.array([2, 3, 75, 76]), 300).status) == ["obscure", "retained", "retained", "ubiquitous"]
    assert list(filter_features(np.array([6, 7, 8]), 100, theta_min=0.07, theta_max=0.07).status) == ["obscure", "retained", "ubiquitous"]
    # thresholds are parameters
    f = filter_features(np.array([0, 1, 2, 3, 4]), 10, theta_min=0.2, theta_max=0.3)
    assert list(f.status) == ["inactive", "obscure", "retained", "retained", "ubiquitous"]
    np.testing.assert_allclose(f.rate, [0, .1, .2, .3, .4])
    with pytest.raises(TypeError, match="integer"):
        filter_features(np.array([0.1]), 10)
    with pytest.raises(ValueError, match="theta_min"):
        filter_features(np.array([1]), 10, theta_min=0.5, theta_max=0.1)
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        filter_features(np.array([11]), 10)


def test_filter_from_stats_matches_rates(store):
    st, _ = store
    fs = feature_stats(st, tiny_sae(), device="cpu")
    f = filter_features(fs, theta_min=0.1, theta_max=0.5)
    r = fs.counts / fs.n_tracks
    expect = np.where(r == 0, "inactive", np.where(r > 0.5, "ubiquitous", np.where(r < 0.1, "obscure", "retained")))
    assert (f.status.to_numpy() == expect).all()


def test_top_examples_ties_and_delta():
    mu = np.array([[1, 0], [2, 0], [1, 0], [0, 5], [1, 1], [0.5, 0]], np.float32)
    mx = np.array([[3, 0], [4, 0], [3, 0], [0, 9], [2, 1], [0.4, 0]], np.float32)
    ids = ["c", "a", "b", "d", "e", "f"]
    fs = FeatureStats(ids, sp.csr_matrix(mu), sp.csr_matrix(mx), np.full(6, 5), tau=0.45)
    ex = top_examples(fs, [0, 1], n=4)
    # feature 0: a (μ 2) first; c, b tie on μ and max -> id order b, c; e has μ 1 but lower max -> after;
    # f has μ > 0 but max 0.4 ≤ τ (δ = 0) -> never an example
    assert list(ex[ex.feature == 0].track_id) == ["a", "b", "c", "e"]
    assert list(ex[ex.feature == 1].track_id) == ["d", "e"] and list(ex["rank"]) == [0, 1, 2, 3, 0, 1]
    assert list(ex.study) == [True, True, True, False, True, True]
    assert feature_beta(ex).to_dict() == {0: 4.0, 1: 9.0}
    # the choice does not depend on the order of the tracks
    perm = [5, 4, 3, 2, 1, 0]
    fs2 = FeatureStats([ids[i] for i in perm], sp.csr_matrix(mu[perm]), sp.csr_matrix(mx[perm]), np.full(6, 5), tau=0.45)
    pd.testing.assert_frame_equal(top_examples(fs2, [0, 1], n=4), ex)
    assert len(top_examples(fs, [0], n=2)) == 2


def test_analyze_sae_writes_outputs(store, tmp_path):
    st, ps = store
    sae = tiny_sae()
    # a manifest with real wav files for the store's tracks
    sr, man = 8000, []
    (tmp_path / "audio").mkdir()
    for j, t in enumerate(ps.ids):
        sf.write(tmp_path / "audio" / f"{t}.wav", np.full(sr, (j + 1) / 200, np.float32), sr)
        man.append(dict(id=t, path=f"audio/{t}.wav", start=0.25, duration=0.5, split=ps.splits[j], labels="{}"))
    man = pd.DataFrame(man)
    out = tmp_path / "feat" / "L2_ef4_k3"
    s = analyze_sae(st, sae, out, theta_min=0.1, theta_max=0.5, n_examples=4, manifest=man, audio_root=tmp_path, device="cpu")
    stats, table, ex, frames = load_features(out)
    assert s["retained"] == (table.status == "retained").sum() > 0 and sum(s[k] for k in ("retained", "inactive", "ubiquitous", "obscure")) == 64
    assert json.loads((out / "summary.json").read_text()) == s
    ret = table[table.status == "retained"]
    assert set(ex.feature) == set(ret.feature) and ret.beta.notna().all() and table[table.status != "retained"].beta.isna().all()
    # β = max activation over the examples' frames
    for f, g in ex.groupby("feature"):
        assert np.isclose(ret.set_index("feature").beta[f], max(frames[(f, r)].max() for r in g["rank"]))
    # the frames are the SAE's activations of that feature on that track
    f, r, t = ex.feature[0], ex["rank"][0], ex.track_id[0]
    with torch.no_grad():
        np.testing.assert_allclose(frames[(f, r)], sae.encode_dense(st.track(t))[:, f].numpy(), atol=1e-6)
    # audio: one wav per example (the manifest's [start, start+duration]) and the concatenation with 0.5 s gaps
    f = int(ex.feature[0]); g = ex[ex.feature == f]
    a, rate = sf.read(out / "examples" / str(f) / "0.wav")
    assert rate == 32000 and len(a) == 16000
    j = ps.ids.index(g.track_id.iloc[0])
    assert np.isclose(a[1000:-1000].mean(), (j + 1) / 200, rtol=0.005)
    # cut clips are written once per track (examples/_clips) and linked from every feature that uses the track
    links = list((out / "examples").glob("[0-9]*/*.wav"))
    assert all(p.is_symlink() for p in links) and len(list((out / "examples" / "_clips").glob("*.wav"))) == ex.track_id.nunique()
    # a whole-file 32 kHz mono WAV row (the demo corpus) links straight to the corpus file
    (tmp_path / "a32").mkdir()
    for t in ps.ids: sf.write(tmp_path / "a32" / f"{t}.wav", np.zeros(32000, np.float32), 32000)
    man2 = man.assign(start=0.0, duration=1.0, path=[f"a32/{t}.wav" for t in man.id])
    s2 = analyze_sae(st, sae, tmp_path / "feat2" / "L2_ef4_k3", theta_min=0.1, theta_max=0.5, n_examples=4, manifest=man2,
                     audio_root=tmp_path, device="cpu")
    l2 = (tmp_path / "feat2" / "L2_ef4_k3" / "examples" / str(f) / "0.wav")
    assert l2.resolve() == (tmp_path / "a32" / f"{g.track_id.iloc[0]}.wav").resolve()
    assert not (tmp_path / "feat2" / "L2_ef4_k3" / "examples" / "_clips").exists()
    with pytest.raises(KeyError, match="not in the manifest"):
        analyze_sae(st, sae, tmp_path / "x", theta_min=0.1, theta_max=0.5, manifest=man.iloc[:3], audio_root=tmp_path, device="cpu")


def test_concept_recovery_against_sklearn_and_planted():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    X = rng.random((50, 7)); X[:, 3] = np.round(X[:, 3], 1)  # ties
    Y = rng.random((50, 3)) < 0.4
    A = auroc_matrix(sp.csr_matrix(X), Y)
    ref = [[roc_auc_score(Y[:, c], X[:, u]) for c in range(3)] for u in range(7)]
    np.testing.assert_allclose(A, ref, atol=1e-6)
    # a unit that is the concept is found; a negated neuron counts only two-sided
    ids = [f"t{i}" for i in range(50)]
    C = pd.DataFrame({"c=a": Y[:, 0], "c=b": Y[:, 1], "c=rare": np.arange(50) < 2}, index=ids)
    X2 = X.copy(); X2[:, 5] = Y[:, 0] + 0.01 * X[:, 0]; X2[:, 6] = -1.0 * Y[:, 1]
    r = concept_recovery(X2, C, ids)
    assert list(r.concept) == ["c=a", "c=b"]  # c=rare has < 3 positives
    assert r.set_index("concept").loc["c=a", "unit"] == 5 and r.recovered.tolist() == [True, False]
    r2 = concept_recovery(X2, C, ids, two_sided=True)
    assert r2.set_index("concept").loc["c=b"].unit == 6 and r2.recovered.all()
    with pytest.raises(KeyError, match="lack tracks"):
        concept_recovery(X2, C, ids[:-1] + ["zz"])


def test_trained_sae_recovers_planted_concepts_random_weights_less(tmp_path):
    st, ps = write_store(tmp_path, n_tracks=500, n_concepts=4, n_background=28, p_background=0.15, signal=1.5)
    X = torch.cat([x for _, x in st.iter_tracks("train")])
    sae = TopKSAE(16, 64, 4, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = X[torch.randint(len(X), (256,), generator=g)]
        loss = (sae(x) - x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    fs = feature_stats(st, sae, device="cpu")
    rnd = random_sae_like(sae, seed=1)
    assert not torch.allclose(rnd.W_dec, sae.W_dec) and torch.equal(rnd.scale, sae.scale)
    assert torch.allclose(rnd.W_dec.norm(dim=1), torch.ones(64))
    fr = feature_stats(st, rnd, device="cpu")
    a_sae = concept_recovery(fs.mu, ps.concepts, fs.track_ids).auroc
    a_rnd = concept_recovery(fr.mu, ps.concepts, fs.track_ids).auroc
    assert a_sae.min() > 0.8 and a_sae.mean() > 0.9 and a_sae.mean() > a_rnd.mean() + 0.05  # held-out AUROC: 0.92 vs 0.85


def test_table1_and_paper():
    t = table1(PAPER_TABLE1)
    assert int(t.to_numpy().sum()) == 4697
    assert t.loc[(32, 100), ("musicgen-large", 2)] == 2344 and t.loc[(32, 32), ("musicgen-small", 22)] == 9
    ours = pd.DataFrame([dict(model="hf:facebook/musicgen-large", layer=24, expansion=32, k=100, retained=7),
                         dict(model="demo", layer=3, expansion=4, k=32, retained=2)])
    w = with_paper(ours)
    assert w.paper[0] == 412 and np.isnan(w.paper[1])
    assert parse_sae_id("L12_ef32_k100") == {"layer": 12, "expansion": 32, "k": 100}
    with pytest.raises(ValueError, match="L<layer>"):
        parse_sae_id("layer12")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stats_on_cuda_equal_cpu(store):
    st, _ = store
    a = feature_stats(st, tiny_sae(), device="cpu")
    b = feature_stats(st, tiny_sae(), device="cuda")
    assert (a.counts == b.counts).all() and (a.mu.indices == b.mu.indices).all()
    np.testing.assert_allclose(a.mu.data, b.mu.data, atol=1e-6); np.testing.assert_array_equal(a.mx.data, b.mx.data)


def test_analyze_sae_resumes_only_when_nothing_changed(store, tmp_path):
    st, _ = store
    sae, out = tiny_sae(), tmp_path / "L2_ef4_k3"
    a = analyze_sae(st, sae, out, theta_min=0.1, theta_max=0.5, device="cpu")
    t0 = (out / "stats.npz").stat().st_mtime_ns
    assert analyze_sae(st, sae, out, theta_min=0.1, theta_max=0.5, device="cpu") == a
    assert (out / "stats.npz").stat().st_mtime_ns == t0  # kept, not recomputed
    b = analyze_sae(st, sae, out, theta_min=0.1, theta_max=0.3, device="cpu")  # new threshold: redone
    assert (out / "stats.npz").stat().st_mtime_ns != t0 and b["run"]["theta_max"] == 0.3
    with torch.no_grad():
        sae.W_dec[0, 0] += 1.0  # "retrained": redone
    t1 = (out / "stats.npz").stat().st_mtime_ns
    analyze_sae(st, sae, out, theta_min=0.1, theta_max=0.3, device="cpu")
    assert (out / "stats.npz").stat().st_mtime_ns != t1


def test_no_usable_concepts_is_a_reason_not_a_crash():
    "Defect: a flat folder (one concept on every clip, or no labels) crashed auroc_matrix with 'need at least one array'."
    rng = np.random.default_rng(0)
    ids = [f"t{i}" for i in range(20)]
    X = sp.csr_matrix(rng.random((20, 5)))
    assert auroc_matrix(X[:, :0], np.ones((20, 2), bool)).shape == (0, 2)
    assert auroc_matrix(X, np.ones((20, 0), bool)).shape == (5, 0)
    with pytest.raises(NoConcepts, match=r"1 concept.*folder=rock 20/20"):
        concept_recovery(X, pd.DataFrame({"folder=rock": True}, index=ids), ids)
    with pytest.raises(NoConcepts, match="no concept labels on its 20 tracks"):
        concept_recovery(X, pd.DataFrame(index=ids), ids)
    # NoConcepts is a ValueError (callers that caught that still do)
    assert issubclass(NoConcepts, ValueError)


@pytest.fixture
def run_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICSAE_ROOT", str(tmp_path))
    return tmp_path


def test_run_features_skips_only_concept_recovery_without_concepts(run_root):
    st, ps = write_store(run_root / "stores", n_tracks=200)
    saes = {"L2_ef4_k3": tiny_sae()}
    flat = pd.DataFrame({"folder=mine": True}, index=ps.ids)   # every clip has the one concept
    out = run_features("flat", {2: st}, saes, concepts=flat, theta_min=0.1, theta_max=0.5, device="cpu")
    res = read_results("flat")["features"]
    assert out["rec"] is None and "folder=mine 40/40" in res["concept_recovery"]["skipped"]   # 40 val tracks
    ref = analyze_sae(st, tiny_sae(), run_root / "ref", theta_min=0.1, theta_max=0.5, device="cpu")
    assert res["retained"] == {"L2_ef4_k3": ref["retained"]} and res["status"]["L2_ef4_k3"]["obscure"] == ref["obscure"]
    assert "recovery_by_layer" not in res and (RunLayout("flat").features_root / "table1.csv").exists()
    assert (RunLayout("flat").features("L2_ef4_k3") / "summary.json").exists()
    # no labels at all: the same skip; real concepts: recovery is measured and the stale skip is gone
    run_features("flat", {2: st}, saes, concepts=None, theta_min=0.1, theta_max=0.5, device="cpu")
    assert "no concept labels" in read_results("flat")["features"]["concept_recovery"]["skipped"]
    out = run_features("flat", {2: st}, saes, concepts=ps.concepts, theta_min=0.1, theta_max=0.5, device="cpu")
    res = read_results("flat")["features"]
    assert "concept_recovery" not in res and res["n_concepts"] == out["rec"].concept.nunique() > 0
    assert set(res["recovery_by_layer"]["L2"]) == {"sae", "random", "neurons"}


def test_run_features_too_small_split_is_a_recorded_skip(run_root):
    st, ps = write_store(run_root / "stores", n_tracks=5)   # one 'val' track
    out = run_features("tiny", {2: st}, {"L2_ef4_k3": tiny_sae()}, concepts=ps.concepts, device="cpu")
    assert out == read_results("tiny")["features"] and "'val' split of the run's corpus has 1 track(s)" in out["skipped"]
    assert not RunLayout("tiny").features("L2_ef4_k3").exists()


def test_run_inputs_read_the_layout_and_name_the_stage(run_root):
    with pytest.raises(FileNotFoundError, match="run 03_activations first"): run_inputs("x")
    write_store(RunLayout("x").acts_root, n_tracks=10, layer=2)
    with pytest.raises(FileNotFoundError, match="has no SAE.*run 04_train_sae first"): run_inputs("x")
    tiny_sae().save(RunLayout("x").sae("L2_ef4_k3")); tiny_sae().save(RunLayout("x").sae("L9_ef4_k3"))
    stores, saes = run_inputs("x")
    assert list(stores) == [2] and list(saes) == ["L2_ef4_k3"]   # no store for layer 9
