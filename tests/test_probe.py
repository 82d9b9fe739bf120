"""Layer probe (paper §4.4): beats chance on a planted layer signal, sits at chance on shuffled labels,
balances classes, splits by feature, and reads profiles from real feature statistics."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from musicsae.features import FeatureStats, feature_stats, filter_features
from musicsae.testing import PlantedStore
from musicsae.core import RunLayout, read_results, skip_stage
from musicsae.features import analyze_sae
from musicsae.probe import activation_profiles, balance, distinct_layers, probe_layer, run_probe
from musicsae.sae import TopKSAE

torch.set_num_threads(1)


def planted_profiles(signal, n=60, L=5, T=40, seed=0):
    rng = np.random.default_rng(seed)
    pat = rng.random((L, T)) < 0.3
    y = np.repeat(np.arange(L) * 4 + 2, n)  # layer numbers 2, 6, 10, ...
    return rng.exponential(0.1, (n * L, T)) * (1 + signal * pat[(y - 2) // 4]), y


def test_planted_signal_beats_chance_shuffled_is_chance():
    with threadpool_limits(1):
        X, y = planted_profiles(2.0)
        r = probe_layer(X, y, seed=0)
        assert r["chance"] == 20 and r["n_layers"] == 5 and r["n_per_layer"] == 60 and r["n_splits"] == 5
        assert r["mlp_mean"] > 70 and r["linear_mean"] > 70
        accs = [probe_layer(X, np.random.default_rng(s).permutation(y), seed=s)["mlp_mean"] for s in range(3)]
        assert abs(np.mean(accs) - 20) < 7
        # no signal at all: chance too
        X0, y0 = planted_profiles(0.0)
        assert abs(probe_layer(X0, y0, seed=0)["mlp_mean"] - 20) < 10
        assert len(r["folds"]["mlp"]) == 5 and np.isclose(np.mean(r["folds"]["mlp"]), r["mlp_mean"])


def test_balanced_classes_and_errors():
    y = np.array([0] * 50 + [1] * 10 + [2] * 7)
    idx = balance(y, seed=0)
    assert np.bincount(y[idx]).tolist() == [7, 7, 7] and len(set(idx)) == 21
    assert not np.array_equal(balance(y, seed=0), balance(y, seed=1))
    # an unbalanced set where the majority layer is easy to guess: balanced chance stays 1/L
    X = np.random.default_rng(0).exponential(0.1, (len(y), 10))
    r = probe_layer(X, y, n_splits=5, seed=0)
    assert r["chance"] == pytest.approx(100 / 3) and r["n_features"] == 21 and r["mlp_mean"] < 70
    with pytest.raises(ValueError, match="two layers"):
        probe_layer(X[:5], np.zeros(5), seed=0)
    with pytest.raises(ValueError, match="labels"):
        probe_layer(X, y[:-1])
    with pytest.raises(ValueError, match="too few"):
        probe_layer(X[[0, 60]], np.array([0, 2]))


def test_folds_by_feature_and_scaling_inside_folds():
    "Same numbers as a hand-written protocol: balanced subsample, stratified folds of features, log1p + scaler fit on the training fold."
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    X, y = planted_profiles(1.0, n=20)
    y = np.r_[y, [2] * 7]; X = np.r_[X, X[:7]]  # unbalanced: layer 2 has 27 features
    with threadpool_limits(1):
        r = probe_layer(X, y, n_splits=4, seed=3)
    idx = balance(y, seed=3); Xb, yb = np.log1p(X[idx]), y[idx]
    ref = []
    for tr, te in StratifiedKFold(4, shuffle=True, random_state=3).split(Xb, yb):
        assert not set(idx[tr]) & set(idx[te])
        sc = StandardScaler().fit(Xb[tr])
        clf = LogisticRegression(max_iter=2000).fit(sc.transform(Xb[tr]), yb[tr])
        ref.append(100 * (clf.predict(sc.transform(Xb[te])) == yb[te]).mean())
    np.testing.assert_allclose(r["folds"]["linear"], ref)
    assert r["n_features"] == 100 and r["n_per_layer"] == 20


def test_profiles_from_real_stats():
    feats, truth = {}, {}
    for l in (2, 6):
        st = PlantedStore(n_tracks=100, layer=l, seed=0)
        sae = TopKSAE(16, 64, 4, layer=l, seed=l)
        fs = feature_stats(st, sae, device="cpu", with_inputs=False)
        tab = filter_features(fs, theta_min=0.05, theta_max=0.5)
        feats[f"L{l}_ef4_k4"] = (fs, tab)
        truth[l] = fs.mu.toarray()[:, tab.feature[tab.status == "retained"]].T
    X, meta = activation_profiles(feats)
    assert list(meta.columns) == ["sae", "layer", "feature"] and X.shape == (len(meta), 20)
    np.testing.assert_array_equal(X, np.concatenate([truth[2], truth[6]]))
    assert (meta.layer.to_numpy() == np.r_[[2] * len(truth[2]), [6] * len(truth[6])]).all()
    with pytest.raises(ValueError, match="no SAEs"):
        activation_profiles({})


def _stats(layer, n_tracks=100, seed=0, theta_min=0.05, theta_max=0.5):
    st = PlantedStore(n_tracks=n_tracks, layer=layer, seed=0)
    fs = feature_stats(st, TopKSAE(16, 64, 4, layer=layer, seed=layer + seed), device="cpu", with_inputs=False)
    return fs, filter_features(fs, theta_min=theta_min, theta_max=theta_max)


@pytest.fixture
def run_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICSAE_ROOT", str(tmp_path))
    return tmp_path


def test_one_layer_is_a_recorded_skip(run_root):
    "Defect: a run with one layer stopped the whole pipeline ('need features from at least two layers')."
    feats = {"L6_ef4_k4": _stats(6), "L6_ef8_k4": _stats(6, seed=1)}
    n = sum(int((t.status == "retained").sum()) for _, t in feats.values())
    out = run_probe("one", feats)
    assert out == read_results("one")["probe"] == {"skipped": out["skipped"]}
    assert f"at least two layers; this run has 1 (L6: {n})" in out["skipped"]
    # a second layer whose SAE retained nothing counts as no layer
    empty = _stats(2, theta_min=0.99, theta_max=0.99)
    assert (empty[1].status != "retained").all()
    assert "this run has 1 (L2: 0, L6:" in run_probe("one", {**feats, "L2_ef4_k4": empty})["skipped"]


def test_too_few_features_per_layer_is_a_recorded_skip(run_root):
    fs, tab = _stats(2)
    one = tab.assign(status=np.where(tab.feature == tab.feature[tab.status == "retained"].iloc[0], "retained", "obscure"))
    out = run_probe("few", {"L2_ef4_k4": (fs, one), "L6_ef4_k4": _stats(6)})
    assert "too few retained features for 5-fold cross-validation: layer(s) L2 have 1" in out["skipped"]
    assert read_results("few")["probe"] == {"skipped": out["skipped"]}


def test_run_probe_reads_the_layout(run_root):
    with pytest.raises(FileNotFoundError, match="run 05_features first"): run_probe("r")
    skip_stage("s", "features", "the 'val' split has 1 track(s)")
    assert run_probe("s") == {"skipped": "05_features was skipped: the 'val' split has 1 track(s)"}
    skip_stage("r", "probe", "an earlier skip")
    feats = {}
    for l in (2, 6):
        st = PlantedStore(n_tracks=100, layer=l, seed=0)
        analyze_sae(st, TopKSAE(16, 64, 4, layer=l, seed=l), RunLayout("r").features(f"L{l}_ef4_k4"), theta_min=0.05,
                    theta_max=0.5, device="cpu")
        feats[f"L{l}_ef4_k4"] = _stats(l)
    with threadpool_limits(1):
        out = run_probe("r", n_splits=3)
        X, meta = activation_profiles(feats)
        ref = probe_layer(X, meta.layer.to_numpy(), n_splits=3)
    assert out["mlp_mean"] == ref["mlp_mean"] and out["folds"] == ref["folds"]
    res = read_results("r")["probe"]
    assert "skipped" not in res and res["mlp_mean"] == ref["mlp_mean"] and res["model"] == "model"
    assert pd.read_csv(RunLayout("r").probe / "probe.csv").source.tolist() == ["ours", "paper", "paper"]


def test_distinct_layers():
    "Defect: the probe separated blocks 2/3 and 9/10, adjacent in a 12-block model, and reported nothing on distinct depths."
    assert distinct_layers([2, 3, 6, 9, 10]) == [2, 6, 10]          # the widest smallest gap among the 3-layer subsets
    assert distinct_layers([10, 9, 6, 3, 2]) == [2, 6, 10]
    assert distinct_layers([2, 6, 12, 18, 22]) == [2, 6, 12, 18, 22]  # MusicGen-Small's layers: already apart
    assert distinct_layers([2, 3, 6]) == [2, 6] and distinct_layers([2, 3]) == [2] and distinct_layers([]) == []
    assert distinct_layers([2, 3, 6, 9, 10], min_gap=4) == [2, 6, 10] and distinct_layers([1, 2, 3, 4], min_gap=1) == [1, 2, 3, 4]
    assert distinct_layers(range(30)) == list(range(0, 30, 2))        # many layers: greedy


def test_run_probe_reports_distinct_layers(run_root):
    feats = {f"L{l}_ef4_k4": _stats(l) for l in (2, 3, 6)}
    with threadpool_limits(1):
        out = run_probe("d", feats, n_splits=3)
        X, meta = activation_profiles(feats)
        keep = meta.layer.isin([2, 6]).to_numpy()
        ref = probe_layer(X[keep], meta.layer.to_numpy()[keep], n_splits=3)
    d = read_results("d")["probe"]["distinct_layers"]
    assert d["layers"] == [2, 6] and d["all_layers"] == [2, 3, 6] and d["min_gap"] == 2 and d["same_as_all"] is False
    assert d["mlp_mean"] == ref["mlp_mean"] and d["linear_mean"] == ref["linear_mean"] and d["chance"] == 50 and d["n_layers"] == 2
    assert out["n_layers"] == 3 and out["distinct_layers"]["mlp_mean"] == ref["mlp_mean"]
    assert pd.read_csv(RunLayout("d").probe / "probe.csv").source.tolist() == ["ours", "ours, layers 2, 6", "paper", "paper"]
    # layers already apart: no second probe; a subset of one layer: its own reason, and the main probe stands
    assert run_probe("d", {k: feats[k] for k in ("L2_ef4_k4", "L6_ef4_k4")}, n_splits=3)["distinct_layers"] == {
        "layers": [2, 6], "min_gap": 2, "all_layers": [2, 6], "same_as_all": True}
    two = run_probe("d", {k: feats[k] for k in ("L2_ef4_k4", "L3_ef4_k4")}, n_splits=3)
    assert "mlp_mean" in two and "at least two layers" in two["distinct_layers"]["skipped"] and two["distinct_layers"]["layers"] == [2]
