"""Feature statistics (paper §3.3), the filter's boundaries, top examples with ties, β, example audio and
concept recovery, on a real ActivationStore written from a planted store and real (tiny) TopK SAEs."""
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import soundfile as sf
import torch

from musicsae.store import ActivationStore, StoreWriter
from musicsae.core import RunLayout, parse_sae_id, read_results
from musicsae.metrics import auroc_matrix, probe_auroc
from musicsae.features import (PAPER_TABLE1, FeatureStats, analyze_sae, feature_beta, feature_stats, filter_features,
                               load_features, obscure_rule_can_fire, recovery_stats, run_features, run_inputs, table1,
                               top_examples, with_paper)
from musicsae.recovery import (NoConcepts, best_unit_auroc, code_histograms, dedup_concepts, measure_recovery, random_sae_like,
                               recover_concepts, run_code_histograms, summarize_recovery)
from musicsae.sae import TopKSAE
from musicsae.testing import PlantedStore

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


def test_auroc_matrix_and_best_unit_against_sklearn():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    X = rng.random((50, 7)); X[:, 3] = np.round(X[:, 3], 1)  # ties
    Y = rng.random((50, 3)) < 0.4
    A = auroc_matrix(sp.csr_matrix(X), Y)
    ref = [[roc_auc_score(Y[:, c], X[:, u]) for c in range(3)] for u in range(7)]
    np.testing.assert_allclose(A, ref, atol=1e-6)
    # the best unit is chosen on the train rows and scored on the held-out rows; a negated neuron counts only two-sided,
    # in the direction chosen on the train rows
    X2 = X.copy(); X2[:, 5] = Y[:, 0] + 0.01 * X[:, 0]; X2[:, 6] = -1.0 * Y[:, 1] + 0.01 * X[:, 1]
    tr, ho = np.arange(30), np.arange(30, 50)
    unit, a = best_unit_auroc(sp.csr_matrix(X2), Y[:, :2], tr, ho)
    assert unit[0] == 5 and a[0] == 1.0 and a[1] < 0.9
    unit, a = best_unit_auroc(X2, Y[:, :2], tr, ho, two_sided=True)
    assert list(unit) == [5, 6] and np.allclose(a, 1.0)
    sel = auroc_matrix(X2[tr], Y[tr, :2]); s2 = np.maximum(sel, 1 - sel).argmax(0)
    assert list(s2) == list(unit)
    # a concept without positives on one side is NaN, not a number
    Y3 = Y[:, :1].copy(); Y3[ho] = False
    assert np.isnan(best_unit_auroc(X2, Y3, tr, ho)[1][0]) and np.isnan(probe_auroc(X2, Y3, tr, ho)[0])
    # the probe: sklearn's logistic regression on train-standardised inputs, scored by held-out AUROC
    from sklearn.linear_model import LogisticRegression
    m, s = X2[tr].mean(0), X2[tr].std(0) + 1e-8
    ref = [roc_auc_score(Y[ho, c], LogisticRegression(max_iter=2000).fit((X2[tr] - m) / s, Y[tr, c]).decision_function((X2[ho] - m) / s))
           for c in range(3)]
    np.testing.assert_allclose(probe_auroc(X2, Y, tr, ho), ref, atol=1e-6)


def test_dedup_concepts_merges_identical_and_near_identical():
    "Defect: duplicate concepts (drums = drum_groove, bach_chorale = chorale) were counted twice."
    base = np.arange(200) < 50
    near = base.copy(); near[60] = True            # Jaccard 50/51 = 0.98: same concept
    loose = base.copy(); loose[:5] = False         # Jaccard 45/50 = 0.90: another concept
    C = pd.DataFrame({"drums": base, "piano": np.arange(200) % 3 == 0, "drum_groove": near, "drums_loose": loose,
                      "empty": False, "empty2": False})
    kept, aliases = dedup_concepts(C)
    assert list(kept.columns) == ["drums", "piano", "drums_loose", "empty", "empty2"] and aliases == {"drums": ["drum_groove"]}
    assert dedup_concepts(C, jaccard=0.9)[1] == {"drums": ["drum_groove", "drums_loose"]}


def test_obscure_rule_flag_matches_the_filter():
    "Defect: over 80 tracks θ_min·N = 0.8, so the obscure rule could not fire and nothing said so."
    assert not obscure_rule_can_fire(80) and not obscure_rule_can_fire(100) and obscure_rule_can_fire(101)
    for n in (80, 100, 101, 300):   # the flag is true exactly when some count is obscure
        assert obscure_rule_can_fire(n) == (filter_features(np.arange(n + 1), n).status == "obscure").any()


def test_measure_recovery_seeds_give_a_spread_and_repeat():
    rng = np.random.default_rng(0)
    C = rng.random((300, 3)) < 0.3
    X = rng.random((300, 10)); X[:, 2] = C[:, 0] + 2.0 * rng.random(300)   # an imperfect detector of concept 0
    m = {("sae", "s", 1): (X, "unit")}
    r = measure_recovery(m, C, np.arange(200), np.arange(200, 300), n_seeds=5, seed=0)
    assert len(r) == 5 * 3 and sorted(r.seed.unique()) == [0, 1, 2, 3, 4]
    per_seed = r[r.concept == 0].auroc
    assert per_seed.std() > 0.005 and 0.6 < per_seed.mean() < 0.95
    pd.testing.assert_frame_equal(r, measure_recovery(m, C, np.arange(200), np.arange(200, 300), n_seeds=5, seed=0))
    s = summarize_recovery(r, [0])
    assert np.isclose(s.mean_auroc[0], per_seed.mean()) and np.isclose(s.sd_over_seeds[0], per_seed.std(ddof=1))


@pytest.fixture
def run_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICSAE_ROOT", str(tmp_path))
    return tmp_path


def _trained_sae(st, seed=0):
    X = torch.cat([x for _, x in st.iter_tracks("train")])
    sae = TopKSAE(16, 64, 4, layer=st.layer, seed=seed)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(300):
        x = X[torch.randint(len(X), (256,), generator=g)]
        loss = (sae(x) - x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    return sae


def test_recovery_summary_on_planted_store(run_root):
    "The measurement on a planted store: a trained SAE recovers the planted concepts (≈ the probe), seeds give a spread."
    st, ps = write_store(run_root / "stores", n_tracks=500, n_concepts=4, n_background=28, p_background=0.15, signal=1.5)
    saes = {"L2_ef4_k4": _trained_sae(st), "L2_ef4_k3": tiny_sae()}   # a trained SAE and an untrained one
    concepts = ps.concepts.assign(**{"planted=c0 again": ps.concepts["planted=c0"]})   # a duplicate concept
    rng = np.random.default_rng(0)
    noise = pd.DataFrame(rng.multinomial(100, np.full(32, 1 / 32), size=500) / 100, index=ps.ids)   # codes that carry nothing
    run_features("rec", {2: st}, saes, concepts=concepts, theta_min=0.1, theta_max=0.5, device="cpu", codes=noise, n_seeds=5)
    s = read_results("rec")["features"]["recovery_summary"]
    assert set(s) >= {"sae", "neurons", "random_sae", "probe", "bag_of_codes", "n_concepts", "n_seeds", "n_tracks_train",
                      "n_tracks_heldout", "sae_id"}
    assert s["n_seeds"] == 5 and s["n_tracks_train"] == 300 and s["n_tracks_heldout"] == 200   # val + test, all of them
    assert s["aliases"] == {"planted=c0": ["planted=c0 again"]} and s["n_concepts"] == 4 and s["concepts"] == list(ps.concepts.columns)
    assert s["sae_id"] == "L2_ef4_k4"                                                            # the best SAE: the trained one
    by = read_results("rec")["features"]["recovery_by_sae"]
    assert by["L2_ef4_k4"]["sae"]["mean_auroc"] > by["L2_ef4_k3"]["sae"]["mean_auroc"] and s["sae"] == by["L2_ef4_k4"]["sae"]
    assert s["sae"]["mean_auroc"] > 0.9 and s["probe"]["mean_auroc"] > 0.95                      # planted concept recovered
    assert s["sae"]["mean_auroc"] > s["random_sae"]["mean_auroc"] + 0.01                         # 0.948 vs 0.925
    assert abs(s["bag_of_codes"]["mean_auroc"] - 0.5) < 0.1                                      # the floor is as given
    for m in ("sae", "neurons", "random_sae", "probe", "bag_of_codes"):
        assert 0 < s[m]["sd_over_seeds"] < 0.1                                                  # seeds give a spread
    res = read_results("rec")["features"]
    assert res["theta_min_n"] == 0.1 * 100 and res["obscure_rule_can_fire"] is True
    rec = pd.read_parquet(RunLayout("rec").features_root / "recovery.parquet")
    assert set(rec.method) == {"sae", "neurons", "random_sae", "probe", "bag_of_codes"} and rec.seed.nunique() == 5
    # informative codes (one code per concept) make the floor high: the bag of codes is what it is given
    C = ps.concepts.to_numpy()
    good = pd.DataFrame(np.c_[C, rng.random((500, 4))] / 10, index=ps.ids)
    full = {sid: recovery_stats(st, sae, RunLayout("rec").features(sid), device="cpu") for sid, sae in saes.items()}   # cached
    r2 = recover_concepts({2: st}, full, ps.concepts, codes=good, n_seeds=5)
    assert r2["record"]["bag_of_codes"]["mean_auroc"] > 0.97 and r2["record"]["sae"] == s["sae"]   # same seeds, same numbers
    with pytest.raises(KeyError, match="lack tracks"):
        recover_concepts({2: st}, full, ps.concepts, codes=good.iloc[:-1])


def test_recovery_stats_are_cached_and_redone_for_a_new_sae(run_root):
    st, _ = write_store(run_root / "stores", n_tracks=30)
    sae, out = tiny_sae(), run_root / "f"
    a, ra = recovery_stats(st, sae, out, device="cpu")
    assert a.n_tracks == 30 and a.x_mean.shape == (30, 16) and ra.x_mean is None   # all tracks, every split
    ref = feature_stats(st, random_sae_like(sae, seed=0), split=None, device="cpu", with_inputs=False)
    assert (ra.mu != ref.mu).nnz == 0
    t0 = (out / "recovery_stats.npz").stat().st_mtime_ns
    recovery_stats(st, sae, out, device="cpu")
    assert (out / "recovery_stats.npz").stat().st_mtime_ns == t0
    with torch.no_grad(): sae.W_dec[0, 0] += 1.0
    recovery_stats(st, sae, out, device="cpu")
    assert (out / "recovery_stats.npz").stat().st_mtime_ns != t0


def test_code_histograms_with_the_demo_codec(run_root, tiny_demo, monkeypatch):
    "The bag-of-codes input: each clip's codes counted per codebook, from the run's model, cached until the clips change."
    rng = np.random.default_rng(0)
    (run_root / "audio").mkdir()
    rows = []
    for i in range(3):
        sf.write(run_root / "audio" / f"c{i}.wav", (0.1 * rng.standard_normal(32000)).astype(np.float32), 32000)
        rows.append(dict(id=f"c{i}", path=f"audio/c{i}.wav", start=0.0, duration=1.0, split="train", labels="{}"))
    man = pd.DataFrame(rows); man.attrs["root"] = str(run_root)
    H = code_histograms(tiny_demo, man, run_root)
    K, V = tiny_demo.n_codebooks, tiny_demo.cardinality
    assert H.shape == (3, K * V) and list(H.index) == ["c0", "c1", "c2"]
    from musicsae.data import load_clip
    codes = tiny_demo.encode(torch.from_numpy(load_clip(rows[1], run_root)[None]))[0].numpy()
    np.testing.assert_allclose(H.loc["c1"].to_numpy().reshape(K, V), [np.bincount(c, minlength=V) / codes.shape[1] for c in codes], atol=1e-6)
    calls = []
    monkeypatch.setattr("musicsae.recovery.load_model", lambda spec, device="auto": calls.append(spec) or tiny_demo)
    a = run_code_histograms("codes", "demo", man, ["c2", "c0"])
    assert calls == ["demo"] and list(a.index) == ["c2", "c0"] and np.allclose(a.to_numpy(), H.loc[["c2", "c0"]].to_numpy())
    run_code_histograms("codes", "demo", man, ["c2", "c0"]); assert calls == ["demo"]             # cached
    run_code_histograms("codes", "demo", man.assign(start=[0.0, 0.0, 0.5]), ["c2", "c0"]); assert len(calls) == 2   # a clip changed
    with pytest.raises(KeyError, match="not in the manifest"):
        code_histograms(tiny_demo, man, run_root, ["zz"])


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


def test_run_features_skips_only_concept_recovery_without_concepts(run_root):
    st, ps = write_store(run_root / "stores", n_tracks=200)
    saes = {"L2_ef4_k3": tiny_sae()}
    flat = pd.DataFrame({"folder=mine": True}, index=ps.ids)   # every clip has the one concept
    out = run_features("flat", {2: st}, saes, concepts=flat, theta_min=0.1, theta_max=0.5, device="cpu")
    res = read_results("flat")["features"]
    assert out["recovery"] is None and "folder=mine 120/120, 80/80" in res["concept_recovery"]["skipped"]   # train, val + test
    ref = analyze_sae(st, tiny_sae(), run_root / "ref", theta_min=0.1, theta_max=0.5, device="cpu")
    assert res["retained"] == {"L2_ef4_k3": ref["retained"]} and res["status"]["L2_ef4_k3"]["obscure"] == ref["obscure"]
    assert "recovery_summary" not in res and (RunLayout("flat").features_root / "table1.csv").exists()
    assert (RunLayout("flat").features("L2_ef4_k3") / "summary.json").exists()
    # no labels at all: the same skip; real concepts: recovery is measured and the stale skip is gone
    run_features("flat", {2: st}, saes, concepts=None, theta_min=0.1, theta_max=0.5, device="cpu")
    assert "no concept labels" in read_results("flat")["features"]["concept_recovery"]["skipped"]
    out = run_features("flat", {2: st}, saes, concepts=ps.concepts, theta_min=0.1, theta_max=0.5, device="cpu")
    res = read_results("flat")["features"]
    assert "concept_recovery" not in res and res["recovery_summary"]["n_concepts"] == len(res["recovery_summary"]["concepts"]) > 0
    assert set(res["recovery_by_layer"]["L2"]) == {"probe", "neurons"} and res["recovery_summary"]["bag_of_codes"] == {
        "skipped": "no codec codes were given"}
    # too few positives: a reason naming the closest concepts; no concept a probe decodes: a reason too
    full = {sid: recovery_stats(st, sae, RunLayout("flat").features(sid), device="cpu") for sid, sae in saes.items()}
    few = pd.DataFrame({"genre=rare": np.arange(200) < 2}, index=ps.ids)
    with pytest.raises(NoConcepts, match=r"1 concept.*genre=rare"):
        recover_concepts({2: st}, full, few)
    noise = pd.DataFrame({"genre=coin": np.random.default_rng(0).random(200) < 0.5}, index=ps.ids)
    with pytest.raises(NoConcepts, match="linearly decodable.*genre=coin"):
        recover_concepts({2: st}, full, noise)
    assert issubclass(NoConcepts, ValueError)


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
