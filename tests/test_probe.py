"""Layer probe (paper §4.4): beats chance on a planted layer signal, sits at chance on shuffled labels,
balances classes, splits by feature, and reads profiles from real feature statistics."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from musicsae.features import FeatureStats, PlantedStore, feature_stats, filter_features
from musicsae.probe import activation_profiles, balance, probe_layer
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
