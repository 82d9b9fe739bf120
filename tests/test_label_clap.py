"""CLAP scoring on a tiny real-architecture ClapModel (random weights, tokenizer trained here), against manual cosines."""
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicsae import label_clap as lc

SR = 16000
LABELS = ["piano", "fast drums", "a sad violin melody", "major key"]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    torch.set_num_threads(1)
    return lc.ClapScorer(str(lc.make_tiny_clap(tmp_path_factory.mktemp("clap"), LABELS, seed=0)))


def tone(f, secs=1.5, sr=SR):
    t = np.arange(int(secs * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(2 * np.pi * 3.1 * f * t)).astype(np.float32)


def manual_audio(scorer, clips):
    p, m = scorer.processor, scorer.model
    with torch.no_grad():
        x = p.feature_extractor(clips, sampling_rate=SR, return_tensors="pt")["input_features"]
        return F.normalize(lc._feats(m.get_audio_features(input_features=x)), dim=-1)


def manual_text(scorer, labels):
    p, m = scorer.processor, scorer.model
    with torch.no_grad():
        ti = p.tokenizer(labels, padding=True, return_tensors="pt")
        return F.normalize(lc._feats(m.get_text_features(input_ids=ti["input_ids"], attention_mask=ti["attention_mask"])), dim=-1)


def test_scores_equal_manual_cosine(scorer):
    clips = [tone(f) for f in (110, 440, 1000)]
    S = lc.clap_scores(scorer, clips, SR, LABELS)
    ref = (manual_audio(scorer, clips) @ manual_text(scorer, LABELS).T).numpy()
    assert S.shape == (3, 4) and np.abs(S).max() <= 1 + 1e-6
    np.testing.assert_allclose(S, ref, atol=1e-5)
    np.testing.assert_allclose(lc.feature_label_scores(scorer, clips, SR, LABELS), ref.mean(0), atol=1e-5)
    # cosine really is a cosine: raw embeddings from the model, normalised by hand
    assert not np.allclose(S[0], S[1])


def test_text_batch_padding_does_not_change_scores(scorer):
    alone = [scorer.embed_text([l])[0] for l in LABELS]
    together = scorer.embed_text(LABELS)
    np.testing.assert_allclose(torch.stack(alone).numpy(), together.numpy(), atol=1e-5)


def test_long_clip_is_windowed_and_averaged(scorer):
    long = tone(330, secs=5.0)   # tiny model sees 2 s windows -> [0,2) [2,4) [4,5)
    got = scorer.embed_audio([long], SR)[0]
    wins = [long[s:s + 2 * SR] for s in (0, 2 * SR, 4 * SR)]
    ref = F.normalize(manual_audio(scorer, wins).mean(0), dim=-1)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(scorer.embed_audio([long], SR).numpy(), got[None].numpy(), atol=1e-6)  # deterministic


def test_other_sample_rates_are_resampled(scorer):
    import soxr
    x32 = soxr.resample(tone(440), SR, 32000).astype(np.float32)
    a = scorer.embed_audio([x32], 32000)
    b = scorer.embed_audio([soxr.resample(x32, 32000, SR).astype(np.float32)], SR)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="empty"): scorer.embed_audio([np.zeros(0, np.float32)], SR)


def test_laion_clap_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "laion_clap", None)   # import laion_clap -> ImportError
    with pytest.raises(ImportError, match="pip install laion-clap"):
        lc.LaionClapScorer("music_audioset_epoch_15_esc_90.14.pt")


def test_laion_clap_path_with_a_stand_in_module(monkeypatch, tmp_path):
    "The wrapper's resampling to 48 kHz, 10 s windows and cosine, with a fake CLAP_Module (the real one needs downloads)."
    calls = {}
    class FakeCLAP:
        def __init__(self, enable_fusion, amodel, device): calls["init"] = (enable_fusion, amodel)
        def load_ckpt(self, path): calls["ckpt"] = path
        def get_audio_embedding_from_data(self, x, use_tensor):
            calls.setdefault("audio_shapes", []).append(x.shape)
            return np.stack([[w[:1000].std(), w[:1000].mean() + 1, 1.0] for w in x])
        def get_text_embedding(self, texts, use_tensor):
            return np.array([[len(t), 1.0, 0.0] for t in texts], np.float32)
    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=FakeCLAP))
    ck = tmp_path / "music.pt"; ck.write_bytes(b"x")
    s = lc.LaionClapScorer(ck)
    assert calls["init"] == (False, "HTSAT-base") and calls["ckpt"] == str(ck)
    S = lc.clap_scores(s, [tone(440, secs=14.0)], SR, ["ab", "abcd"])
    assert calls["audio_shapes"] == [(2, 480000)]     # 14 s at 48 kHz -> 10 s + a zero-padded 4 s window (a tail under 2.5 s would be dropped)
    assert S.shape == (1, 2) and np.all(np.abs(S) <= 1 + 1e-6)
