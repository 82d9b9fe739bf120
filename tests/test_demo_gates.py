"""The demo model's gates (02c) on the shipped demo model and a small rendered demo corpus: each number equals the
same quantity computed directly from its definition, and the verdicts follow the thresholds."""
import numpy as np
import pandas as pd
import pytest
import torch

from musicsae.core import data_dir, paper_layers
from musicsae.data import concept_matrix, load_clip
from musicsae.metrics import frechet_distance, probe_auroc, ridge_r2


@pytest.fixture(scope="module")
def shipped():
    from musicsae.demo.corpus import demo_corpus
    from musicsae.demo.labelers import load_demo_labelers
    from musicsae.demo.model import DemoMusicModel
    man = demo_corpus(n_clips=40, seed=0)
    tr, ho = man[man.split == "train"].head(16), man[man.split != "train"].head(8)
    audio = {k: [load_clip(r, man.attrs["root"]) for r in d.to_dict("records")] for k, d in (("train", tr), ("heldout", ho))}
    tagger = load_demo_labelers(sorted((data_dir() / "models" / "demo_labelers").glob("800-*"))[0])[0]
    return DemoMusicModel.load(device="cpu"), audio, concept_matrix(pd.concat([tr, ho])), tagger


def test_gates_equal_their_definitions(shipped):
    from musicsae.demo.gates import demo_gates, gate_verdicts, layer_summaries, onehot_codes, tagger_embedding
    from musicsae.demo.model import heldout_ce
    model, audio, C, tagger = shipped
    m, per = demo_gates(model, audio["train"], audio["heldout"], C, tagger=tagger, n_gen=4, gen_s=2.0, min_pos=2)
    layer = paper_layers(model.n_layers)[2]
    assert m["layer"] == layer == 6 and (m["n_train"], m["n_heldout"]) == (16, 8)
    codes = {k: [model.encode(torch.as_tensor(a)[None])[0] for a in v] for k, v in audio.items()}
    # cross-entropy: the teacher-forced CE of the same clips
    assert np.isclose(m["ce_train"], float(heldout_ce(model, codes["train"]).mean()), atol=1e-5)
    assert np.isclose(m["ce_heldout"], float(heldout_ce(model, codes["heldout"]).mean()), atol=1e-5)
    # token R²: a ridge regression of the sampled frames on their one-hot codes
    s_tr, s_ho = (layer_summaries(model, codes[k], layer, seed=s) for k, s in (("train", 0), ("heldout", 1)))
    V = model.cardinality
    ref = ridge_r2(onehot_codes(s_tr["frame_codes"], V), s_tr["frames"], onehot_codes(s_ho["frame_codes"], V), s_ho["frames"])
    assert np.isclose(m["token_r2_mid"], ref, atol=1e-6) and ref < 1   # 16 clips: too few frames for a positive R² here
    # the frames really are the layer's residual at the sampled positions, with the codes those frames read
    r = model.residuals(codes["train"][0][None], [layer])[layer][0].numpy()
    rows = [np.flatnonzero((r == f).all(1))[0] for f in s_tr["frames"][:5]]
    assert (codes["train"][0][:, rows].T.numpy() == s_tr["frame_codes"][:5]).all()
    # the probe table: the residual probe's AUROC per concept is probe_auroc on the track means
    if len(per):
        X = np.concatenate([s_tr["means"], s_ho["means"]]); Ck = C[per.index].to_numpy(bool)
        np.testing.assert_allclose(per.residual.to_numpy(), probe_auroc(X, Ck, np.arange(16), np.arange(16, 24)), atol=1e-6)
        assert np.isclose(m["probe_median_auroc"], np.nanmedian(per.residual))
        # the reference: the same probe on the demo tagger's input features of the clips, standardised on the train clips
        from musicsae.demo.labelers import clip_features
        H = np.stack([clip_features(a, model.sample_rate) for a in [*audio["train"], *audio["heldout"]]])
        H = (H - H[:16].mean(0)) / (H[:16].std(0) + 1e-6)
        np.testing.assert_allclose(per.hand_features.to_numpy(), probe_auroc(H, Ck, np.arange(16), np.arange(16, 24)), atol=1e-6)
        assert np.isclose(m["hand_features_median_auroc"], np.nanmedian(per.hand_features))
    # the FD floor: held-out against train clips cut to 2 s, in the tagger's hidden space
    L = 2 * model.sample_rate
    held = [a[:L] for a in audio["heldout"] if len(a) >= L][:4]; train = [a[:L] for a in audio["train"] if len(a) >= L][:4]
    floor = frechet_distance(tagger_embedding(tagger, held, model.sample_rate), tagger_embedding(tagger, train, model.sample_rate))
    assert np.isclose(m["gen_fd_floor"], floor, rtol=1e-6) and m["gen_fd"] > 0
    # the codec's own distance: the same train clips encoded and decoded, against the same held-out clips
    rec = [x.numpy() for x in model.decode(model.encode(torch.as_tensor(np.stack(train))))]
    codec_fd = frechet_distance(tagger_embedding(tagger, rec, model.sample_rate), tagger_embedding(tagger, held, model.sample_rate))
    assert np.isclose(m["gen_fd_codec"], codec_fd, rtol=1e-6) and codec_fd > 0
    assert m["fd_draws"] == 8 and m["gen_fd_sd"] > 0 and m["gen_fd_floor_sd"] > 0      # 4 of the 8 held-out clips per draw
    assert m["gates"] == gate_verdicts(m)


def test_gate_verdicts_follow_thresholds():
    from musicsae.demo.gates import GATES, gate_verdicts
    base = dict(ce_train=1.0, ce_heldout=1.0 + GATES["max_ce_gap"] - 1e-9, probe_median_auroc=0.9,
                bag_of_codes_median_auroc=0.9 - GATES["min_probe_margin"] - 1e-9, token_r2_mid=GATES["max_token_r2"] - 1e-9)
    assert gate_verdicts(base)["ship"]
    assert not gate_verdicts({**base, "ce_heldout": 1.0 + GATES["max_ce_gap"] + 0.01})["ce_gap"]
    assert not gate_verdicts({**base, "bag_of_codes_median_auroc": 0.86})["probe_beats_codes"]
    assert not gate_verdicts({**base, "token_r2_mid": GATES["max_token_r2"]})["token_r2"]
    assert not gate_verdicts({**base, "probe_median_auroc": None})["ship"]      # a missing number fails its gate
    assert not gate_verdicts({**base, "token_r2_mid": float("nan")})["ship"]


def test_conditioned_model_is_prompted_with_each_heldout_clips_tags(shipped, monkeypatch):
    "gen_fd_cfg: generated clip i is asked for held-out clip i's tags (with CFG), and the FD is taken against those clips."
    from musicsae.demo.conditioning import TagEncoder, prompt_tags, tag_vocab
    from musicsae.demo.gates import demo_gates
    from musicsae.demo.model import DemoMusicModel, tiny_demo_model
    _, audio, C, tagger = shipped
    t = tiny_demo_model(seed=0, n_layers=2, d_model=32)
    model = DemoMusicModel(t.codec, t.lm, tags=TagEncoder(32, seed=0))
    calls, gen = [], model.generate
    monkeypatch.setattr(model, "generate", lambda prompts=None, **kw: (calls.append((prompts, kw.get("guidance_scale"))), gen(prompts, **kw))[1])
    m, _ = demo_gates(model, audio["train"], audio["heldout"], C, tagger=tagger, n_gen=4, gen_s=2.0, min_pos=2, hand_reference=False)
    assert np.isfinite(m["gen_fd_cfg"]) and m["gen_fd_cfg"] > 0 and m["cfg_scale"] == 3.0
    prompted = [(p, g) for ps, g in calls if ps for p in ps]
    assert len(prompted) == 4 and all(g == 3.0 for _, g in prompted) and sum(1 for ps, _ in calls if not ps) >= 1
    held = [i for i, a in enumerate(audio["heldout"]) if len(a) >= 2 * 32000][:4]
    vocab = set(tag_vocab())
    for (p, _), i in zip(prompted, held):
        assert set(prompt_tags(p)) == {c for c in C.columns[C.iloc[16 + i].to_numpy(bool)] if c in vocab}, p
