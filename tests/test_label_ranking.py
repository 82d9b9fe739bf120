"""06d label ranking: contrast puts a planted feature's tag first where the frequency ranking does not, detection of
a perfect label is 1 and of a random one about 0.5, accuracy against a planted truth table, the study's reranking,
and Gemini's contrast set through label_features."""
import numpy as np
import pandas as pd
import pytest
import torch

from musicsae import label_ranking as R
from musicsae import labeling as L
from musicsae.core import RunLayout

SR = 8000
TAGS = ["minor chords", "arpeggio", "drone", "staccato", "tremolo", "glissando"]   # "minor chords": common everywhere
FREQS = {t: 300.0 * (i + 1) for i, t in enumerate(TAGS)}


def tone(f, secs=0.25):
    t = np.arange(int(secs * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


class ToneTagger:
    "A tagger that listens: the clip's dominant frequency names its planted tag (p 0.3); 'minor chords' is 0.5 on every clip."
    name, sample_rate, classes = "tonetag", SR, {"style": TAGS}

    def predict(self, x):
        f = np.fft.rfftfreq(len(x), 1 / SR)[np.abs(np.fft.rfft(x)).argmax()]
        p = np.full(len(TAGS), 0.5 / (len(TAGS) - 1)); p[0] = 0.5
        k = int(np.argmin([abs(f - FREQS[t]) for t in TAGS]))
        if k and abs(f - FREQS[TAGS[k]]) < 50: p[1:] = 0.2 / (len(TAGS) - 2); p[k] = 0.3
        return {"style": p.astype(np.float32)}


class ToyClap:
    "A 2-d CLAP: audio → (brightness, 1 - brightness); the text 'bright' is (1, 0), anything else (0, 1)."
    name = "toyclap"

    def embed_audio(self, clips, sr):
        b = [min(np.fft.rfftfreq(len(c), 1 / sr)[np.abs(np.fft.rfft(c)).argmax()] / 2000, 1.0) for c in clips]
        return torch.nn.functional.normalize(torch.tensor([[v, 1 - v + 1e-3] for v in b], dtype=torch.float32), dim=-1)

    def embed_text(self, labels):
        return torch.tensor([[1.0, 0.0] if l == "bright" else [0.0, 1.0] for l in labels])


@pytest.fixture(scope="module")
def planted():
    "A 130-clip corpus: 10 clips of each planted tag (a tone at its frequency), 80 plain clips (4 kHz); one feature per tag."
    corpus = {}
    for t in TAGS[1:]:
        for i in range(10): corpus[f"{t}-{i}"] = tone(FREQS[t] + i)
    for i in range(80): corpus[f"plain-{i}"] = tone(3000.0 + 5 * i)
    ids = list(corpus)
    cs = R.corpus_scores(corpus.__getitem__, ids, SR, [ToneTagger()], ToyClap(), batch=32, progress=False)
    records, acts, tops = [], {}, {}
    for j, t in enumerate(TAGS[1:]):
        ex = [f"{t}-{i}" for i in range(10)]
        cands, notes = L.propose([corpus[e] for e in ex], SR, taggers=[ToneTagger()], top_n=3)
        assert not notes
        records.append(L.label_record(j, "s", L.score_candidates(ToyClap(), [corpus[e] for e in ex], SR, cands),
                                      gt_concept=f"style={t}", gt_auroc=1.0))
        acts[j] = np.array([1.0 + (10 - int(i.split("-")[1])) / 10 if i.startswith(t + "-") else 0.0 for i in ids])
        tops[j] = ex
    return cs, records, acts, tops


def test_contrast_puts_the_planted_tag_first_where_frequency_does_not(planted):
    cs, records, acts, tops = planted
    concepts = [f"style={t}" for t in TAGS]
    table = R.ranking_table(records, cs, acts, tops, concepts=[c.replace("style=", "") for c in concepts])
    for j, t in enumerate(TAGS[1:]):
        g = table[table.feature == j]
        assert g.sort_values("score", ascending=False).label.iloc[0] == "minor chords"       # the frequency ranking
        assert g.sort_values("contrast", ascending=False).label.iloc[0] == t                 # the contrastive ranking
        assert g.sort_values("detect", ascending=False).label.iloc[0] == t
        assert abs(g.set_index("label").contrast["minor chords"]) < 0.1                      # no lift for a common tag
        assert g.set_index("label").detect[t] == 1.0


def test_label_accuracy_per_ranking_on_the_planted_features(planted):
    cs, records, acts, tops = planted
    t = R.ranking_table(records, cs, acts, tops)
    t["concept"] = "style=" + t.label        # the tagger's classes are the concepts
    acc = R.label_accuracy(t, ["clap", "contrast", "detect"], n_boot=200)
    assert acc["n"] == 5 and acc["any"] == 1.0
    assert acc["contrast"]["top1"] == acc["detect"]["top1"] == 1.0 and acc["contrast"]["sd"]["top1"] == 0.0
    assert acc["clap"]["top1"] == 0.0        # the toy CLAP scores every tag's text alike: ties go to the labeller's score
    assert acc["random"]["top3"] == 1.0 and 0.0 <= acc["random"]["top1"] <= 1.0   # three candidates: top-3 always holds it


def test_detection_auroc_perfect_is_one_random_is_about_half():
    rng = np.random.default_rng(0)
    act = np.r_[rng.exponential(1.0, 60) + 0.01, np.zeros(240)]
    d = R.detection_auroc(act, act, top_k=10, n_bins=4)
    assert d["mean"] == 1.0 and all(d[k] == 1.0 for k in ("top", "q1", "q2", "q3", "q4"))
    rand = [R.detection_auroc(rng.random(300), act)["mean"] for _ in range(200)]
    assert abs(np.mean(rand) - 0.5) < 0.02 and 0.02 < np.std(rand) < 0.1
    # a label that only names the strongest clips: perfect at the top, chance at the weakest quartile
    d = R.detection_auroc((act > np.quantile(act[:60], 0.75)).astype(float), act)
    assert d["q4"] == 1.0 and d["q1"] == 0.5
    assert np.isnan(R.detection_auroc(act, np.ones(300))["mean"])   # fires everywhere: no negatives


def test_random_label_detection_baseline(planted):
    cs, records, acts, tops = planted
    rl = R.random_label_detection(None, records, cs, acts, seed=0)
    assert len(rl) == len(records) and rl.detect.between(0, 1).all()


def test_label_accuracy_on_a_planted_truth_table():
    def row(f, label, clap, contrast, gt, auc=0.95):
        return dict(sae="s", feature=f, label=label, concept=f"c={label}", clap=clap, score=0.5, contrast=contrast,
                    random=0.5, gt_concept=gt, gt_auroc=auc)
    t = pd.DataFrame([row(0, "x", 0.9, 0.1, "c=y"), row(0, "y", 0.5, 2.0, "c=y"), row(0, "z", 0.1, 0.0, "c=y"),
                      row(0, "Y", 0.4, 1.9, "c=y"),                       # the same label text again: counted once
                      row(1, "y", 0.9, 2.0, "c=y"), row(1, "x", 0.2, 0.1, "c=y"),
                      row(2, "x", 0.9, 2.0, "c=x", auc=0.6),              # selects nothing: left out
                      row(3, "x", 0.9, 1.0, "c=w"), row(3, "z", 0.1, 0.5, "c=w"), row(3, "v", 0.0, 0.0, "c=w"),
                      row(3, "w", -0.1, -1.0, "c=w")])                    # fourth under both: outside top-3
    acc = R.label_accuracy(t, ["clap", "contrast"], n_boot=500, seed=1)
    assert (acc["n"], acc["n_unselective"], acc["any"]) == (3, 1, 1.0)
    assert (acc["clap"]["top1"], acc["clap"]["top3"]) == pytest.approx((1 / 3, 2 / 3))
    assert (acc["contrast"]["top1"], acc["contrast"]["top3"]) == pytest.approx((2 / 3, 2 / 3))
    sd = acc["clap"]["sd"]["top1"]; assert sd == pytest.approx(np.sqrt(1 / 3 * 2 / 3 / 3), abs=0.05)   # binomial sd of a mean of 3


def test_rankings_table_reranks_study_items(tmp_path, planted):
    cs, records, acts, tops = planted
    layout = RunLayout("t", folder=str(tmp_path)); layout.labels_root.mkdir(parents=True)
    R.ranking_table(records, cs, acts, tops).to_parquet(R.rankings_path(layout, "s"))
    items = pd.DataFrame([dict(feature=j, sae="s", method="tonetag", label=r["best"]["label"], clips=["a.wav"] * 3)
                          for j, r in enumerate(records)] + [dict(feature=99, sae="s", method="tonetag", label="kept", clips=["a.wav"] * 3)])
    out = R.rerank_items(items, layout, "contrast")
    assert out.label.tolist() == [*TAGS[1:], "kept"] and list(out.columns) == list(items.columns)
    assert R.rerank_items(items, layout, "clap") is items
    with pytest.raises(FileNotFoundError, match="rankings"):
        R.rerank_items(items, RunLayout("u", folder=str(tmp_path / "none")), "detect")


def test_corpus_scores_needs_a_scorer_for_free_text_and_known_tracks(planted):
    cs = R.corpus_scores({"a": tone(600.0)}.__getitem__, ["a"], SR, [ToneTagger()], None, progress=False)
    assert cs({"label": "arpeggio", "class": "arpeggio", "source": "tonetag:style"})[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no CLAP scorer"): cs({"label": "bright", "source": "gemini"})
    with pytest.raises(KeyError, match="not in the corpus scores"): cs.index(["b"])


def test_gemini_contrast_set_through_label_features(tmp_path, monkeypatch):
    pytest.importorskip("google.genai")
    from musicsae import label_gemini as lg
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-real")
    feats = {0: [tone(600.0), tone(610.0)], 1: [tone(900.0)]}
    with lg.LocalGeminiServer(default=lg.audio_reply) as srv:
        g = lg.GeminiLabeler("gemini-test", cache_dir=tmp_path / "cache", base_url=srv.url)
        L.label_features(feats, SR, "s", tmp_path / "a.jsonl", ToyClap(), geminis=[g], progress=False)
        recs = L.label_features(feats, SR, "s", tmp_path / "b.jsonl", ToyClap(), geminis=[g], progress=False,
                                contrast={0: [tone(3000.0)], 1: []})
    parts = [r["body"]["contents"][0]["parts"] for r in srv.requests]
    # the paper's requests, then feature 0 again with its contrast set; feature 1 (no contrast clips) is the paper's
    # request again, answered from the cache
    assert [len(p) for p in parts] == [2, 2, 3]
    assert parts[0][0]["text"] == lg.load_prompt() and parts[2][0]["text"] == lg.load_prompt() + "\n\n" + lg.CONTRAST_NOTE
    assert all(any(c["source"] == "gemini" for c in r["candidates"]) for r in recs)
