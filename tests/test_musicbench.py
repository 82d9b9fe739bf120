"""musicbench (issue 24) on planted data where the answer is known, and the command end to end on a tiny transformers
MusicGen saved with save_pretrained and loaded back with from_pretrained, with a tiny SAE in SAELens's folder format."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from musicsae.concept_scores import Concepts, Views, group_splits, score_views, summarize, absorption, interchange, encode_views, frame_choice
from musicsae.recovery import random_sae_like
from musicsae.testing import PlantedStore
from musicsae.sae import TopKSAE


def _rank_auroc_cols(S, C):
    "The paired-column AUROC as it was computed before value sorting: rank-based, the diagonal of `auroc_matrix`."
    from musicsae.metrics import auroc_matrix
    C = np.asarray(C, bool); P = C.sum(0); ok = (P > 0) & (P < len(C)); a = np.full(C.shape[1], np.nan)
    if ok.any(): a[ok] = np.diagonal(auroc_matrix(np.asarray(S)[:, ok], C[:, ok]))
    return a

torch.set_num_threads(1)


def _planted_frames(n_clips=80, T=25, n_concepts=4, seed=0):
    "Frame labels of n_concepts concepts (each on in ~25 % of frames) on n_clips clips of T frames, and the clip of each frame."
    rng = np.random.default_rng(seed)
    Y = rng.random((n_clips * T, n_concepts)) < 0.25
    return Y, np.repeat(np.arange(n_clips), T)


def _concept_sae(d=64, n_latents=256, n_concepts=4, seed=0):
    "A TopK SAE whose latent 10 + c IS concept c: its encoder row reads the concept's axis, which only concept c writes."
    sae = TopKSAE(d, n_latents, k=n_concepts, seed=seed)
    with torch.no_grad():
        sae.W_enc.zero_(); sae.b_enc.fill_(-0.5)
        for c in range(n_concepts): sae.W_enc[10 + c] = sae.W_dec[10 + c] = torch.eye(d)[c]
    return sae


def test_planted_concept_latent_k1_near_one_random_baselines_near_half():
    "Concepts on axes 0-3 (amplitude 1), loud background on the other 60 axes: the concept latent scores ~1, random ones ~0.5."
    Y, fc = _planted_frames()
    sae = _concept_sae()
    g = torch.Generator().manual_seed(2)
    X = torch.zeros(len(Y), 64); X[:, :4] = torch.from_numpy(Y.astype(np.float32)); X[:, 4:] = torch.randn(len(Y), 60, generator=g)
    X += 0.05 * torch.randn(len(Y), 64, generator=g)
    with torch.no_grad():
        Z = sp.csr_matrix(sae.encode_dense(X).numpy())
        R = sp.csr_matrix(random_sae_like(sae, seed=3).encode_dense(X).numpy())
    n = fc.max() + 1
    clip = lambda M: sp.csr_matrix(np.vstack([np.asarray(M[fc == i].mean(0)) for i in range(n)]))
    fcon = Concepts(Y, [f"c{i}" for i in range(4)], ["planted"] * 4, pd.DataFrame({"planted": np.ones(len(Y), bool)}))
    splits = group_splits(np.arange(n) // 2, 5)
    res = {}
    for name, M in (("sae", Z), ("random_sae", R)):
        long = score_views(Views(clip(M), M), None, fcon, fc, splits)
        res[name] = summarize(long).set_index("metric")["mean"]
    assert res["sae"]["sparse_probe_k1"] > 0.99 and res["sae"]["detection"] > 0.99
    assert abs(res["random_sae"]["sparse_probe_k1"] - 0.5) < 0.1 and abs(res["random_sae"]["detection"] - 0.5) < 0.1
    # the selected unit is the planted latent, on every seed
    from musicsae.concept_scores import detection
    for tr, ho in splits:
        ftr, fho = np.flatnonzero(~np.isin(fc, ho)), np.flatnonzero(np.isin(fc, ho))
        assert detection(Z, Y, ftr, fho)[0].tolist() == [10, 11, 12, 13]


def test_sparse_aurocs_rank_once_equal_auroc_matrix():
    "The sparse rank-once AUROC equals metrics.auroc_matrix (ties, negative codes, silent and constant columns, a one-class concept)."
    from musicsae.metrics import auroc_matrix
    from musicsae.metrics import sparse_aurocs
    rng = np.random.default_rng(4)
    X = np.where(rng.random((500, 60)) < 0.1, rng.integers(-3, 5, (500, 60)) * 0.5, 0.0); X[:, 7] = 0; X[:, 8] = 2.0
    Y = rng.random((500, 9)) < 0.2; Y[:, 4] = True
    A = sparse_aurocs(sp.csr_matrix(X), Y); ok = [j for j in range(9) if j != 4]
    np.testing.assert_allclose(A[:, ok], auroc_matrix(X, Y[:, ok]), atol=1e-9)
    assert np.isnan(A[:, 4]).all()


def test_latent_table_names_each_planted_latents_concept():
    "Latent 10 + c is concept c: its row names c on every seed, held-out AUROC ~1; the random twin's best latent for c ~0.5."
    from musicsae.musicbench_latents import latent_table, LATENT_COLUMNS
    Y, fc = _planted_frames()
    sae = _concept_sae()
    g = torch.Generator().manual_seed(2)
    X = torch.zeros(len(Y), 64); X[:, :4] = torch.from_numpy(Y.astype(np.float32)); X[:, 4:] = torch.randn(len(Y), 60, generator=g)
    with torch.no_grad():
        Z = sp.csr_matrix(sae.encode_dense(X).numpy()); R = sp.csr_matrix(random_sae_like(sae, seed=3).encode_dense(X).numpy())
    fcon = Concepts(Y, [f"k:c{i}" for i in range(4)], ["k"] * 4, pd.DataFrame({"k": np.ones(len(Y), bool)}))
    splits = group_splits(np.arange(fc.max() + 1) // 2, 5)
    long = pd.concat([score_views(Views(None, M), None, fcon, fc, splits).assign(method=f"{m}/S") for m, M in (("sae", Z), ("random_sae", R))])
    t = latent_table(Z, fcon, fc, splits, long, sae="S")
    assert list(t.columns) == list(LATENT_COLUMNS) and set(t.sae) == {"S"} and set(t.latent) <= set(np.flatnonzero(Z.getnnz(0)))
    t = t.set_index("latent")
    assert t.loc[[10, 11, 12, 13], "concept"].tolist() == ["k:c0", "k:c1", "k:c2", "k:c3"]
    assert (t.loc[10:13, "seeds_chose"] == 5).all() and (t.loc[10:13, "n_seeds"] == 5).all() and (t.loc[10:13, "auroc"] > 0.99).all()
    assert (t.loc[10:13, "sae_best_auroc"] > 0.99).all() and (abs(t.loc[10:13, "random_sae_auroc"] - 0.5) < 0.1).all()
    # the held-out AUROC is each seed's choice scored on that seed's held-out frames (here always the planted concept)
    from musicsae.metrics import auroc_cols
    want = np.mean([auroc_cols(Z[np.isin(fc, ho)][:, [11]].toarray(), Y[np.isin(fc, ho)][:, [1]])[0] for _, ho in splits])
    assert t.loc[11, "auroc"] == pytest.approx(want)


def test_planted_absorption_found_and_absent_without_it():
    "Parent latent 0 fires on children 0 and 1; on child 2 latent 5 fires instead: a third of the parent's frames absorbed."
    rng = np.random.default_rng(0); n = 1200
    parent = rng.random(n) < 0.5; child = np.where(parent, rng.integers(0, 3, n), -1)
    X = np.zeros((n, 16)); X[:, 12:] = rng.random((n, 4))
    X[parent & (child < 2), 0] = 1 + rng.random((parent & (child < 2)).sum())
    X[child == 2, 5] = 1; X[child == 0, 6] = 1; X[child == 1, 7] = 1
    splits = group_splits(np.arange(n) // 2, 5)
    rates = [absorption(sp.csr_matrix(X), parent, child, tr, ho) for tr, ho in splits]
    for (tr, ho), r in zip(splits, rates):
        want = (child[ho] == 2).sum() / parent[ho].sum()
        assert r["absorption"] == pytest.approx(want) and r["parent_recall"] == pytest.approx(1 - want)
    # no absorption when the parent's latent fires on all its children
    X2 = X.copy(); X2[child == 2, 0] = 1
    assert max(absorption(sp.csr_matrix(X2), parent, child, tr, ho)["absorption"] for tr, ho in splits) == 0


def test_planted_interchange_isolates_each_attribute():
    rng = np.random.default_rng(0); G = 80
    x, y = rng.integers(0, 3, G), rng.integers(0, 3, G)
    x2, y2 = (x + 1) % 3, (y + 1) % 3
    xs = np.stack([x, x2, x], 1).ravel(); ys = np.stack([y, y, y2], 1).ravel()   # base, x changed, y changed
    X = 0.05 * rng.random((3 * G, 20))
    X[np.arange(3 * G), xs] += 1; X[np.arange(3 * G), 3 + ys] += 1              # units 0-2 one-hot x, 3-5 one-hot y
    C = pd.DataFrame({**{f"x={v}": xs == v for v in range(3)}, **{f"y={v}": ys == v for v in range(3)}})
    attr_of = {c: c[0] for c in C.columns}
    pairs = pd.DataFrame({"a": np.r_[0:3 * G:3, 0:3 * G:3], "b": np.r_[1:3 * G:3, 2:3 * G:3], "attribute": ["x"] * G + ["y"] * G})
    for tr, ho in group_splits(np.repeat(np.arange(G), 3), 5):
        r = interchange(X, C, attr_of, pairs, tr, ho, k=1).set_index("attribute")
        # one-hot units: a change of value turns 2 of the attribute's 3 units over; the other attribute's pairs turn none
        assert r.loc["x", "same"] == pytest.approx(2 / 3) and r.loc["y", "same"] == pytest.approx(2 / 3)
        assert r.other.max() == 0 and (r.isolation > 0.6).all()
        # units blind to the attributes: no isolation
        assert interchange(rng.random((3 * G, 20)), C, attr_of, pairs, tr, ho, k=1).isolation.abs().max() < 0.3


def test_encode_views_streams_sparse_codes_equal_dense():
    ps = PlantedStore(n_tracks=10, n_frames=40, d_model=8)
    sae = TopKSAE(8, 64, 3, seed=0); ids = ps.track_ids()
    fr = frame_choice({t: 40 for t in ids}, 150, seed=1)
    v = encode_views(ps, {"s": sae, "x": None}, ids, fr, batch_tokens=37)
    with torch.no_grad(): Z = [sae.encode_dense(ps.track(t)).numpy()[fr[t]] for t in ids]
    assert sp.issparse(v["s"].frame) and v["s"].frame.nnz <= 3 * v["s"].frame.shape[0]
    np.testing.assert_allclose(v["s"].frame.toarray(), np.concatenate(Z), atol=1e-6)
    np.testing.assert_allclose(v["s"].clip.toarray(), np.stack([z.mean(0) for z in Z]), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_hf_folder(tmp_path_factory, tiny_hf):
    "The tiny transformers MusicGen written with save_pretrained (model + processor), as the paper smoke does."
    from transformers import EncodecFeatureExtractor, MusicgenProcessor
    out = tmp_path_factory.mktemp("musicgen")
    tiny_hf.model.save_pretrained(out)
    MusicgenProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=tiny_hf.sample_rate),
                      tokenizer=tiny_hf.tokenizer).save_pretrained(out)
    return out


def test_command_end_to_end_tiny_hf_saelens(tiny_hf_folder, tmp_path, capsys):
    from musicsae.musicbench import main
    from musicsae.musicbench_scores import METHODS
    from musicsae.sae_hub import export_saelens
    export_saelens(TopKSAE(32, 128, 4, layer=2, seed=0), tmp_path / "saelens", hook_name="layers.2")
    argv = ["--model", f"hf:{tiny_hf_folder}", "--sae", str(tmp_path / "saelens"), "--layers", "2", "--out", str(tmp_path / "out"),
            "--per-family", "2", "--families", "chords,tempos", "--clip-s", "1.5", "--corpus-dir", str(tmp_path / "corpus"),
            "--max-frames", "600", "--random-model", "--epochs", "1", "--device", "cpu"]
    assert main(argv) == 0
    rec = json.loads((tmp_path / "out" / "musicbench.json").read_text())
    assert rec["model"] == f"hf:{tiny_hf_folder}" and rec["layers"] == [2] and rec["n_seeds"] == 5
    cell = rec["families"]["frame:onset"]["sparse_probe_k1"]
    assert set(cell) == set(METHODS)
    for m in METHODS: assert set(cell[m]) == {"mean", "sd_over_seeds"}, (m, cell[m])
    assert cell["chance"]["mean"] == 0.5
    md = (tmp_path / "out" / "musicbench.md").read_text()
    assert "frame:onset" in md and "random_model_sae" in md
    assert sorted(p.name for p in (tmp_path / "out" / "figures").glob("*.png"))
    # per latent: a table beside the layer's scores, summarised in the record
    from musicsae.musicbench_latents import latents_file, LATENT_COLUMNS
    lat = latents_file(tmp_path / "out", 2)
    lt = pd.read_parquet(lat)
    assert list(lt.columns) == list(LATENT_COLUMNS) and len(lt) and set(lt.sae) == set(rec["saes"]) and lt.latent.between(0, 127).all()
    assert (lt.family == lt.concept.str.split(":").str[0]).all() and lt.auroc.between(0, 1).all() and (lt.seeds_chose <= lt.n_seeds).all()
    assert rec["latents"][rec["saes"][0]] == {"file": "scores/L2/latents.parquet", "n_latents": len(lt), "median_auroc": pytest.approx(lt.auroc.median()),
                                          "n_auroc_ge_0_9": int((lt.auroc >= 0.9).sum())}
    # a second run reuses everything: same record, scores read back from the cache
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "scores").rglob("*") if p.is_file()}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "scores").rglob("*") if p.is_file()} == first
    rec2 = json.loads((tmp_path / "out" / "musicbench.json").read_text())
    assert rec2["families"] == rec["families"]
    # a layer scored before the per-latent table existed: the table is made, the layer's scores and stamp untouched
    lat.unlink(); lat.with_suffix(".json").unlink()
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "scores").rglob("*") if p.is_file() and p.name.startswith(("L2.", "long", "abs", "inter"))} == \
           {p: t for p, t in first.items() if p.name.startswith(("L2.", "long", "abs", "inter"))}
    pd.testing.assert_frame_equal(pd.read_parquet(lat), lt)
    # the finished run, layer by layer (--summary): the probe on layer 2 and the SAE's k = 5 cell are the record's
    capsys.readouterr()
    assert main(["--summary", "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    pc = rec["families"]["frame:onset"]["linear_probe"]["probe_ceiling"]
    k5 = rec["by_sae"][rec["saes"][0]]["sae|frame:onset|sparse_probe_k5"]
    assert f"| onset | {pc['mean']:.3f} ± {pc['sd_over_seeds']:.3f} |" in text
    assert f"| {rec['saes'][0]} | onset | {k5['mean']:.3f} ± {k5['sd_over_seeds']:.3f} |" in text
    with pytest.raises(SystemExit): main(["--summary"])                  # it reads a finished run: --out is needed


# --- the scoring before its speed-up (352c598), verbatim, as the reference the faster code must equal -----------------
# (AUROCs by scipy's ranks, a family's rows sliced per seed, mean differences per function, scikit-learn's checks on)

def _old_sparse_probe(X, C, tr, ho, ks=(1, 2, 5, 20), reg: float = 1.0):
    from musicsae.concept_scores import valid_concepts, mean_diff, top_units, dense_cols, fit_logistic, logistic_scores
    from musicsae.metrics import auroc_cols
    C = np.asarray(C, bool); ok = valid_concepts(C, tr, ho); kmax = min(max(ks), X.shape[1])
    out = {k: np.full(C.shape[1], np.nan) for k in ks}
    if not ok.any(): return out
    cs = np.flatnonzero(ok)
    D = mean_diff(X[tr], C[tr][:, cs])
    top = top_units(X[tr], C[tr][:, cs], kmax)
    used = np.unique(top); pos = np.searchsorted(used, top)
    Xt, Xh = dense_cols(X[tr], used), dense_cols(X[ho], used)
    fit = None
    for k in sorted(ks):
        kk = min(k, kmax)
        if kk == 1:
            sign = np.sign(D[top[:, 0], np.arange(len(cs))]); sign[sign == 0] = 1
            out[k][cs] = auroc_cols(Xh[:, pos[:, 0]] * sign, C[ho][:, cs]); continue
        At, Ah = Xt[:, pos[:, :kk]].transpose(1, 0, 2), Xh[:, pos[:, :kk]].transpose(1, 0, 2)
        fit = fit_logistic(At, C[tr][:, cs].T, reg, init=fit)
        out[k][cs] = auroc_cols(logistic_scores(Ah, fit), C[ho][:, cs])
    return out


def _old_detection(X, C, tr, ho, two_sided: bool = False, candidates: int = 20):
    from musicsae.concept_scores import valid_concepts, top_units, dense_cols
    from musicsae.metrics import auroc_cols, auroc_matrix
    C = np.asarray(C, bool); ok = valid_concepts(C, tr, ho)
    unit, a = np.full(C.shape[1], -1), np.full(C.shape[1], np.nan)
    if not ok.any(): return unit, a
    cs = np.flatnonzero(ok)
    top = top_units(X[tr], C[tr][:, cs], candidates, signed=not two_sided)
    used = np.unique(top); pos = np.searchsorted(used, top)
    A = auroc_matrix(dense_cols(X[tr], used), C[tr][:, cs])
    At = np.take_along_axis(A, pos.T, 0)
    S = np.maximum(At, 1 - At) if two_sided else At
    b = S.argmax(0); best = pos[np.arange(len(cs)), b]
    flip = (At[b, np.arange(len(cs))] < 0.5) & two_sided
    Xh = dense_cols(X[ho], used)[:, best] * np.where(flip, -1, 1)
    unit[cs], a[cs] = used[best], auroc_cols(Xh, C[ho][:, cs])
    return unit, a


def _old_score_views(views, clip_c, frame_c, frame_clip, splits, ks=(1, 2, 5, 20), two_sided=False, probes="sparse", max_train=2000):
    from musicsae.concept_scores import ridge_probe_auroc
    from musicsae.metrics import probe_auroc
    rows, n_clips = [], len(clip_c.Y) if clip_c is not None else int(frame_clip.max()) + 1
    for s, (tr, ho) in enumerate(splits):
        hoc = np.zeros(n_clips, bool); hoc[ho] = True
        for level, X, cc in (("clip", views.clip, clip_c), ("frame", views.frame, frame_c)):
            if X is None or cc is None: continue
            ish = hoc if level == "clip" else hoc[frame_clip]
            for fam in cc.families():
                rs = np.flatnonzero(cc.scope[fam].to_numpy()); cols = cc.cols(fam)
                Xf, Cf = X[rs], cc.Y[rs][:, cols]
                t, h = np.flatnonzero(~ish[rs]), np.flatnonzero(ish[rs])
                if not len(t) or not len(h): continue
                if len(t) > max_train: t = np.sort(np.random.default_rng([s, len(t)]).choice(t, max_train, replace=False))
                res = {}
                if probes in ("sparse", "both"):
                    res |= {f"sparse_probe_k{k}": v for k, v in _old_sparse_probe(Xf, Cf, t, h, ks).items()}
                    res["detection"] = _old_detection(Xf, Cf, t, h, two_sided=two_sided)[1]
                if probes in ("full", "both"):
                    res["linear_probe"] = probe_auroc(Xf, Cf, t, h) if level == "clip" else ridge_probe_auroc(Xf, Cf, t, h)
                for m, v in res.items(): rows.append((level, fam, m, s, np.asarray(cc.names)[cols], v))
    n = [len(r[5]) for r in rows]; rep = lambda i: np.repeat([r[i] for r in rows], n)
    return pd.DataFrame(dict(level=rep(0), family=rep(1), metric=rep(2), seed=rep(3), concept=np.concatenate([r[4] for r in rows]),
                             value=np.concatenate([r[5] for r in rows]).astype(float)))


def test_scores_equal_the_reference_before_the_speed_up(monkeypatch):
    """score_views (value-sorted AUROCs, shared slices and mean differences, one torch thread) gives the old numbers (run
    with two threads) bit for bit: SAE codes and neurons, scopes, subsampled train rows."""
    import musicsae.concept_scores as cs
    ps = PlantedStore(n_tracks=48, n_frames=30, d_model=12, n_concepts=4, seed=3)
    ids = ps.track_ids(); fr = frame_choice({t: 30 for t in ids}, 900, seed=1)
    views = encode_views(ps, {"sae": TopKSAE(12, 48, 4, seed=2), "res": None}, ids, fr)
    fc = np.repeat(np.arange(len(ids)), [len(fr[t]) for t in ids])
    rng = np.random.default_rng(0)
    fam = np.arange(len(ids)) % 3                                        # clip families, each measured on its own clips
    Yc = np.stack([(fam == f) & (rng.integers(0, 3, len(ids)) == v) for f in range(3) for v in range(3)], 1)
    cc = Concepts(Yc, [f"c{j}" for j in range(9)], [f"f{j // 3}" for j in range(9)], pd.DataFrame({f"f{f}": fam == f for f in range(3)}))
    Yf = rng.random((len(fc), 7)) < 0.2; Yf[:, 0] |= ps.concepts.to_numpy()[fc, 0] & (rng.random(len(fc)) < 0.8)
    kinds = ["a", "a", "a", "b", "b", "c", "c"]
    part = np.isin(fc, np.flatnonzero(fam > 0))                          # kind b lives on two thirds of the clips
    fcon = Concepts(Yf, [f"k{j}" for j in range(7)], kinds, pd.DataFrame({"a": np.ones(len(fc), bool), "b": part, "c": np.ones(len(fc), bool)}))
    splits = group_splits(np.arange(len(ids)) // 2, 5)
    for name, two_sided in (("sae", False), ("res", True)):
        for probes in ("sparse", "both"):
            new = score_views(views[name], cc, fcon, fc, splits, two_sided=two_sided, probes=probes, max_train=300)
            with monkeypatch.context() as mp, cs._torch_threads(2):    # the ridge probe's AUROCs as they were computed; two threads
                mp.setattr(cs, "auroc_cols", _rank_auroc_cols)
                old = _old_score_views(views[name], cc, fcon, fc, splits, two_sided=two_sided, probes=probes, max_train=300)
            pd.testing.assert_frame_equal(new.drop(columns="value"), old.drop(columns="value"))
            assert np.array_equal(new.value.to_numpy(), old.value.to_numpy(), equal_nan=True), (name, probes)
            assert new.value.notna().mean() > 0.5


def test_dry_run_tiny_hf_projects_every_step_and_writes_nothing(tiny_hf_folder, tmp_path, capsys):
    "The dry run on the tiny transformers MusicGen (from_pretrained), the paper's SAE grid at one layer: each step timed, a total, no files."
    import tempfile
    from musicsae.musicbench import main
    from musicsae.musicbench_dry_run import PAPER_GRID
    before = set(Path(tempfile.gettempdir()).glob("musicbench-dry-*"))
    argv = ["--model", f"hf:{tiny_hf_folder}", "--layers", "2", "--per-family", "2", "--families", "chords,tempos", "--clip-s", "1.5",
            "--corpus-dir", str(tmp_path / "corpus"), "--max-frames", "600", "--random-model", "--epochs", "1", "--device", "cpu",
            "--dry-run", "--dry-frames", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rec = json.loads(out[-1])
    assert rec["dry_run"] == "musicbench" and rec["layers"] == [2] and rec["n_saes"] == len(PAPER_GRID) == 4
    steps = rec["steps_s"]
    assert {"load model", "render", "extract", "extract, random-model twin", "codes", "baseline SAEs", "scoring: neurons + probe ceiling",
            "scoring: SAEs + baselines", "scoring: input floors"} == set(steps)
    assert all(v >= 0 for v in steps.values()) and rec["total_s"] == pytest.approx(sum(steps.values()), abs=0.5)
    assert min(steps["baseline SAEs"], steps["scoring: neurons + probe ceiling"], steps["scoring: SAEs + baselines"]) > 0
    table = [line for line in out if line.startswith("| ")]
    assert {line.split(" | ")[0][2:] for line in table[1:-1]} == set(steps) and table[-1].startswith("| **total**")
    assert list(tmp_path.iterdir()) == [] and set(Path(tempfile.gettempdir()).glob("musicbench-dry-*")) == before
