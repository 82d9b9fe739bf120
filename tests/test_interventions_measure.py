"""The interventions measurement (nbs/08b_interventions.ipynb) on the tiny demo model with planted statistics."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from musicsae.features import FeatureStats
from musicsae.sae import TopKSAE
import musicsae.interventions_measure as IM
from musicsae.interventions_measure import (rank_latents, density_matched, erased_means, erasure_curve, measure_clamp,
                                            clamp_summary, top_clip_ablation, measure_interventions, plot_erasure, plot_clamp)

LAYER = 1


@pytest.fixture(scope="module")
def model(tiny_demo):
    torch.set_num_threads(1)
    return tiny_demo


def planted(d=32, F=64, n=150, seed=0):
    "Track means that carry concept 'c=yes' only through latent 3 of the SAE: x̄ = μ̄·s·W_d + noise."
    g = np.random.default_rng(seed); s = TopKSAE(d, F, 4, layer=LAYER, seed=seed)
    pos = np.arange(n) % 3 == 0
    mu = g.uniform(0, 0.5, (n, F)) * (g.random((n, F)) < 0.5); mu[:, 3] = np.where(pos, 2.0, 0.0) + g.uniform(0, 0.1, n)
    x = mu @ s.W_dec.detach().numpy() + 0.05 * g.normal(size=(n, d))
    ids = [f"t{i}" for i in range(n)]
    st = FeatureStats(ids, sp.csr_matrix(mu), sp.csr_matrix(mu * 1.5), np.full(n, 10), 0.0, x.astype(np.float32))
    return st, s, pd.DataFrame({"c=yes": pos}, index=ids), pd.Series(np.where(np.arange(n) % 5 < 3, "train", "val"), index=ids)


def codes_fn_for(model, T=12):
    def fn(ids):
        return torch.stack([torch.randint(0, model.cardinality, (model.n_codebooks, T), generator=torch.Generator().manual_seed(int(i[1:])))
                            for i in ids])
    return fn


def loud(clips, sr): return pd.DataFrame({"c=yes": [float(np.abs(c).mean()) for c in clips]})


def test_selection_density_and_exact_erased_means():
    st, s, C, split = planted()
    assert rank_latents(st, C, split)["c=yes"][0] == 3
    J = [3, 7]
    Xe = erased_means(st, s, J)
    ref = st.x_mean - st.mu.toarray()[:, J] @ (s.scale * s.W_dec).detach().numpy()[J]
    assert np.allclose(Xe, ref, atol=1e-5)
    rate = st.rate; r = density_matched(rate, J, seed=1, window=4)
    assert not set(r) & set(J) and len(set(r)) == 2
    with pytest.raises(ValueError, match="x_mean"): erased_means(FeatureStats(st.track_ids, st.mu, st.mx, st.n_frames), s, J)


def test_erasure_curve_reads_the_planted_latent(model):
    st, s, C, split = planted()
    codes = codes_fn_for(model)(["t1", "t2", "t4"])
    cur = erasure_curve(st, s, C, split, "c=yes", rank_latents(st, C, split)["c=yes"], model=model, layer=LAYER, codes=codes,
                        n_random=2, chance=0.6)
    one = lambda m: cur[cur.method == m]
    assert one("none").auroc.item() > 0.95
    assert one("sae").n_removed.tolist() == [1] and one("sae").auroc.item() <= 0.6        # at chance after the planted latent: stop
    assert one("random").auroc.min() > 0.95                                                 # as many random latents: still found
    assert one("diffmean").auroc.item() < 0.75 and one("leace").auroc.item() < 0.75
    assert np.isfinite(cur.dce).all() and one("none").dce.item() == 0
    # ΔCE is the model's: ablating every latent moves the CE, ablating none does not
    assert IM.clip_ce(model, codes, LAYER, IM.ablate_edit(s, [])).tolist() == IM.clip_ce(model, codes).tolist()
    assert not np.allclose(IM.clip_ce(model, codes, LAYER, IM.ablate_edit(s, range(s.n_latents))), IM.clip_ce(model, codes))


def test_clamp_dose_response_is_paired_and_resumes(model, tmp_path, monkeypatch):
    "Latent 3 never fires (encoder bias −10⁶): clamping it to 0 is a no-op, so its paired ΔP is exactly 0; to 50 it moves the clips."
    st, s, C, split = planted()
    with torch.no_grad(): s.b_enc[3] = -1e6
    plan = pd.DataFrame(dict(concept=["c=yes"], sae=["s"], layer=[LAYER], unit=[3], beta=[50.0]))
    clips = measure_clamp(model, plan, {"s": s}, {"s": st.rate}, loud, tmp_path / "clamp", doses=(0.0, 1.0), n_seeds=3,
                          n_random=2, duration_s=0.1)
    assert len(clips) == 2 * 3 + 2 * 2 * 3          # baseline: 2 blocks × 3 seeds; 2 doses × 2 methods × 3 seeds
    t = clamp_summary(clips).set_index("dose")
    assert t.loc[0.0, "gain"] == 0 and t.loc[0.0, "ci"] == [0.0, 0.0] and t.loc[1.0, "gain"] != 0 and len(t.loc[1.0, "ci"]) == 2 and np.isfinite(t.delta_ce).all()
    monkeypatch.setattr(IM, "paired_generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("made again")))
    again = measure_clamp(model, plan, {"s": s}, {"s": st.rate}, loud, tmp_path / "clamp", doses=(0.0, 1.0), n_seeds=3,
                          n_random=2, duration_s=0.1)
    pd.testing.assert_frame_equal(again, clips)


def test_top_clip_ablation_of_a_silent_latent_changes_nothing(model):
    s = TopKSAE(model.d_model, 64, 4, layer=LAYER, seed=0)
    codes = codes_fn_for(model)(["t1", "t2", "t3"])
    x = model.residuals(codes, [LAYER])[LAYER]
    z = s.encode_dense(x.reshape(-1, model.d_model)).detach()
    silent, busy = int(torch.nonzero(z.sum(0) == 0)[0]), int(z.sum(0).argmax())
    rate = np.r_[np.zeros(63), 1.0]
    r = top_clip_ablation(model, s, LAYER, silent, codes, loud, "c=yes", rate, n_random=2)
    w = r.pivot(index="clip", columns="method", values="p")
    assert (w.sae == w["none"]).all() and len(r) == 9
    r = top_clip_ablation(model, s, LAYER, busy, codes, loud, "c=yes", rate, n_random=2)
    ce = r.groupby("method").ce.mean()
    assert ce.sae != ce["none"]


def test_measure_interventions_record_and_figures(model, tmp_path):
    st, s, C, split = planted()
    plan = pd.DataFrame(dict(concept=["c=yes"], sae=["s"], layer=[LAYER], unit=[3], beta=[5.0]))
    rec, fr = measure_interventions(model, plan, {"s": s}, {"s": st}, C, split, codes_fn_for(model), loud, tmp_path,
                                    n_random=2, ce_clips=3, doses=(0.0, 2.0), n_seeds=2, n_top=2, duration_s=0.1, chance=0.6)
    e = rec["erasure"]["c=yes"]
    assert e["n_to_chance"] == 1 and e["auroc_unedited"] > 0.95 and e["random_auroc"][0] > 0.95
    assert rec["summary"]["reached_chance"] == 1 and len(rec["clamp"]["per_concept"]) == 2 and rec["ablation"]["c=yes"]["n_clips"] == 2
    import json; json.dumps(rec)
    plot_erasure(fr["curves"], tmp_path / "e.png"); plot_clamp(fr["clamp"], tmp_path / "c.png")
    assert (tmp_path / "e.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0


def test_manifest_codes_encode_once_and_cut(model, tmp_path):
    import soundfile as sf
    from musicsae.interventions_measure import manifest_codes
    sr = model.sample_rate; t = np.arange(int(sr * 0.5)) / sr
    for i, f0 in enumerate((220, 440)): sf.write(tmp_path / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), sr)
    man = pd.DataFrame(dict(id=["a", "b"], path=["c0.wav", "c1.wav"], start=[0.0, 0.0], duration=[0.5, 0.3]))
    man.attrs["root"] = str(tmp_path)
    fn = manifest_codes(model, man, clip_s=0.4)
    c = fn(["a", "b"])
    assert c.shape[:2] == (2, model.n_codebooks) and c.shape[-1] <= int(round(0.4 * model.frame_rate))
    assert c.shape[-1] == fn(["b"]).shape[-1]                                   # cut to the shortest clip of the call
    assert fn(["a"]).shape[-1] == int(round(0.4 * model.frame_rate))
    from musicsae.data import load_clip
    ref = model.encode(torch.as_tensor(load_clip(man.iloc[0], tmp_path, sr)[None]))[0, :, :c.shape[-1]]
    assert torch.equal(c[0], ref.cpu())
    with pytest.raises(KeyError, match="not in the manifest"): fn(["zz"])
