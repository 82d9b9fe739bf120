"""musicsae.data.run_corpus and the folder manifest: the defects of "your own music, end to end", each with its test."""
import json
import os
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import musicsae.data as data
from musicsae.core import RunLayout
from musicsae.audio import SR
from musicsae.data import (balanced_splits, build_folder_manifest, concept_matrix, load_clip, read_manifest, run_corpus,
                           sample_clips, unique_keys, write_manifest)
from musicsae.demo.corpus import LABEL_KEYS, example_music_folder


@pytest.fixture
def repo(tmp_path, monkeypatch):
    "A repository root of its own: runs/ and data/ of these tests go under tmp_path/repo."
    root = tmp_path / "repo"; root.mkdir()
    monkeypatch.setenv("MUSICSAE_ROOT", str(root))
    return root


def tone_file(path, freq, dur, sr=16000, channels=1, amp=0.3, **kw):
    "A sine of `freq` Hz, `dur` s long, written with soundfile."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    x = amp * np.sin(2 * np.pi * freq * np.arange(int(round(dur * sr))) / sr)
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr, **kw)
    return path


def peak_hz(x, sr=SR):
    "The strongest frequency of the first second of `x` (1 Hz bins)."
    return int(np.argmax(np.abs(np.fft.rfft(x[:sr], n=sr))))


def clip_of(man, cid, root):
    row = man.set_index("id").loc[cid]
    return load_clip(dict(row) | {"id": cid}, root)


def listing(folder):
    "Names and sizes of everything under `folder` (links not followed)."
    return sorted((p.relative_to(folder).as_posix(), p.lstat().st_size) for p in Path(folder).rglob("*"))


# ---------------------------------------------------------------- clip ids


def test_same_stem_different_extension_gets_unique_ids(tmp_path):
    # defect: Song.ogg + Song.mp3 gave the id Song_000 twice and the whole manifest aborted
    tone_file(tmp_path / "Song.ogg", 440.0, 3.0)
    tone_file(tmp_path / "Song.mp3", 660.0, 3.0, sr=22050)
    tone_file(tmp_path / "x.wav", 550.0, 3.0)
    man, skipped = build_folder_manifest(tmp_path)
    assert sorted(man["id"]) == ["Song_mp3_000", "Song_ogg_000", "x_000"] and skipped.empty
    assert peak_hz(clip_of(man, "Song_ogg_000", tmp_path)) == 440 and peak_hz(clip_of(man, "Song_mp3_000", tmp_path)) == 660
    write_manifest(man, tmp_path / "out" / "m.parquet")  # passes the duplicate-id check


def test_slash_and_double_underscore_get_unique_ids(tmp_path):
    # defect: a/b.ogg and a__b.ogg both gave the key a__b
    tone_file(tmp_path / "a" / "b.ogg", 440.0, 2.0)
    tone_file(tmp_path / "a__b.ogg", 660.0, 2.0)
    man, _ = build_folder_manifest(tmp_path)
    ids = dict(zip(man["path"], man["id"]))
    assert len(set(ids.values())) == 2 and all(i.startswith("a__b_ogg-") for i in ids.values())
    assert dict(zip(*build_folder_manifest(tmp_path)[0][["path", "id"]].values.T)) == ids  # the same ids every run
    assert peak_hz(clip_of(man, ids["a/b.ogg"], tmp_path)) == 440 and peak_hz(clip_of(man, ids["a__b.ogg"], tmp_path)) == 660
    # the rule depends on the names only, not on their order
    assert unique_keys(["a__b", "a__b"], ["a__b.ogg", "a/b.ogg"]) == unique_keys(["a__b", "a__b"], ["a/b.ogg", "a__b.ogg"])[::-1]


# ---------------------------------------------------------------- links


def test_symlinked_file_gives_its_clips_once(tmp_path):
    # defect: a link to a file of the folder gave every clip twice
    tone_file(tmp_path / "real.wav", 440.0, 25.0)
    (tmp_path / "link.wav").symlink_to("real.wav")
    (tmp_path / "fav").mkdir(); (tmp_path / "fav" / "again.wav").symlink_to(tmp_path / "real.wav")
    man, skipped = build_folder_manifest(tmp_path)
    assert sorted(man["id"]) == ["real_000", "real_001"] and set(man["path"]) == {"real.wav"}
    reasons = dict(zip(skipped["path"].map(lambda p: Path(p).relative_to(tmp_path).as_posix()), skipped["reason"]))
    assert reasons == {"link.wav": "duplicate of real.wav", "fav/again.wav": "duplicate of real.wav"}


def test_broken_symlink_is_recorded(tmp_path):
    # defect: a broken link vanished from both tables
    tone_file(tmp_path / "ok.wav", 440.0, 2.0)
    (tmp_path / "gone.mp3").symlink_to("missing.mp3")
    man, skipped = build_folder_manifest(tmp_path)
    assert man["id"].tolist() == ["ok_000"]
    assert skipped["path"].map(lambda p: Path(p).name).tolist() == ["gone.mp3"]
    assert skipped["reason"].iloc[0].startswith("broken symlink") and "missing.mp3" in skipped["reason"].iloc[0]


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("n", [10, 12, 14, 20, 37, 101])
def test_balanced_splits_deal_files_8_1_1(n):
    keys = [f"music/track {i:03d}.ogg" for i in range(n)]
    s = balanced_splits(keys)
    c = Counter(s.values())
    assert c["val"] >= 1 and c["test"] >= 1 and sum(c.values()) == n
    for split, f in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(c[split] - f * n) < 1, (n, c)
    assert balanced_splits(keys[::-1]) == s  # order of listing does not matter
    if n == 20: assert c == {"train": 16, "val": 2, "test": 2}


def test_folder_splits_are_per_file_and_balanced(tmp_path):
    # defect: a hash of each file on its own left val with one file of twenty (or none)
    for i in range(20):
        tone_file(tmp_path / f"t{i:02d}.wav", 200.0 + 20 * i, 12.0, sr=8000)  # one full clip + tail
    tone_file(tmp_path / "long.wav", 300.0, 35.0, sr=8000)
    (tmp_path / "bad.wav").write_bytes(b"RIFFjunk" * 8)  # not usable: takes no split's place
    man, skipped = build_folder_manifest(tmp_path)
    per_file = man.groupby("path")["split"].agg(["nunique", "first"])
    assert (per_file["nunique"] == 1).all()  # clips of one file share a split
    assert per_file["first"].value_counts().to_dict() == {"train": 17, "val": 2, "test": 2}
    assert len(skipped) == 1


# ---------------------------------------------------------------- max_clips


def test_max_clips_samples_across_files_and_splits(repo):
    # defect: max_clips took the first rows: one file, one split
    d = repo / "music"
    for i in range(12):
        tone_file(d / f"song {i:02d}.wav", 200.0 + 30 * i, 30.0, sr=8000)  # 3 clips each
    full = run_corpus("full", audio_dir="music")
    assert len(full) == 36 and full.groupby("split")["path"].nunique().to_dict() == {"train": 10, "val": 1, "test": 1}
    few = run_corpus("few", audio_dir="music", max_clips=6, seed=3)
    assert len(few) == 6 and few["path"].nunique() == 6
    assert few["split"].value_counts().to_dict() == {"train": 4, "val": 1, "test": 1}
    assert set(few["id"]) <= set(full["id"])
    assert run_corpus("few_again", audio_dir="music", max_clips=6, seed=3)["id"].tolist() == few["id"].tolist()  # seeded
    assert few["id"].tolist() == [i for i in full["id"] if i in set(few["id"])]  # manifest order kept
    # the same on a plain table
    m = pd.DataFrame(dict(id=[f"c{i}" for i in range(100)], path=[f"f{i // 10}" for i in range(100)],
                          split=["train"] * 80 + ["val"] * 10 + ["test"] * 10))
    s = sample_clips(m, 10, seed=0)
    assert s["split"].value_counts().to_dict() == {"train": 8, "val": 1, "test": 1} and s["path"].nunique() == 10


# ---------------------------------------------------------------- streaming


def test_scan_reads_one_clip_at_a_time(tmp_path, monkeypatch):
    # defect: a one-hour file was decoded whole into memory
    tone_file(tmp_path / "long.wav", 440.0, 95.0, sr=16000)
    asked = []
    real = data.load_audio
    def spy(path, sr=SR, min_duration=0.0, offset=0.0, duration=None):
        asked.append(duration)
        return real(path, sr, min_duration, offset, duration)
    monkeypatch.setattr(data, "load_audio", spy)
    man, _ = build_folder_manifest(tmp_path, clip_s=10.0)
    assert len(man) == 9 and len(asked) == 9 and all(d is not None and d <= 10.0 for d in asked)
    assert man["start"].tolist() == [10.0 * k for k in range(9)]


def test_scan_memory_is_bounded_by_the_clip(tmp_path):
    tone_file(tmp_path / "hour.wav", 440.0, 300.0, sr=16000, subtype="PCM_16")  # 5 min; decoded whole: ≥ 19 MB float32
    tracemalloc.start()
    try:
        man, _ = build_folder_manifest(tmp_path, clip_s=10.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(man) == 30
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB while scanning a 5 min file"


# ---------------------------------------------------------------- run_corpus


def test_run_corpus_never_writes_into_the_music_folder(repo):
    # defect: the manifest was written into the user's own music folder
    d = repo / "music"
    tone_file(d / "a.wav", 440.0, 12.0); tone_file(d / "sub" / "b.flac", 550.0, 3.0)
    (d / "empty.ogg").touch()
    before = listing(d)
    build_folder_manifest(d)
    man = run_corpus("mine", audio_dir=str(d))
    assert listing(d) == before
    lay = RunLayout("mine")
    assert lay.manifest.is_file() and lay.skipped.is_file() and lay.corpus_card.is_file()
    assert lay.manifest.parent == repo / "runs" / "mine" / "data"
    assert man.attrs["corpus"] == "folder" and all(Path(p).is_absolute() for p in man["path"])
    assert peak_hz(clip_of(man, "sub__b_000", man.attrs["root"])) == 550


def test_run_corpus_reuses_by_stamp_not_file_times(repo, monkeypatch):
    d = repo / "music"
    tone_file(d / "a.wav", 440.0, 12.0); tone_file(d / "b.wav", 660.0, 5.0)
    calls = []
    real = data.build_folder_manifest
    monkeypatch.setattr(data, "build_folder_manifest", lambda *a, **k: calls.append(1) or real(*a, **k))
    lay = RunLayout("r")
    run_corpus("r", audio_dir="music")
    first = lay.manifest.read_bytes()
    os.utime(d / "a.wav", (2e9, 2e9))  # touched: same bytes
    run_corpus("r", audio_dir="music")
    assert len(calls) == 1 and lay.manifest.read_bytes() == first
    tone_file(d / "a.wav", 880.0, 12.0)  # same size, other bytes
    man = run_corpus("r", audio_dir="music")
    assert len(calls) == 2 and peak_hz(clip_of(man, "a_000", None)) == 880
    run_corpus("r", audio_dir="music", clip_s=5.0)  # another argument that matters
    assert len(calls) == 3
    run_corpus("r", audio_dir="music", clip_s=5.0, n_clips=99, render_jobs=4)  # arguments a folder does not use
    assert len(calls) == 3
    lay.manifest.write_bytes(first)  # a manifest that is not the one the card describes
    run_corpus("r", audio_dir="music", clip_s=5.0)
    assert len(calls) == 4


def test_run_corpus_files_are_group_readable(repo):
    d = repo / "music"; tone_file(d / "a.wav", 440.0, 3.0)
    old = os.umask(0o022)
    try:
        run_corpus("perm", audio_dir="music")
    finally:
        os.umask(old)
    lay = RunLayout("perm")
    for p in (lay.manifest, lay.skipped, lay.corpus_card, lay.stamp("data")):
        assert p.stat().st_mode & 0o044 == 0o044, (p, oct(p.stat().st_mode))


def test_run_corpus_card(repo):
    d = repo / "music"
    for i in range(10):
        tone_file(d / f"t{i}.wav", 300.0 + 10 * i, 21.0, sr=8000)  # 2 clips each
    (d / "empty.ogg").touch(); tone_file(d / "quiet.wav", 440.0, 11.0, amp=0.0)
    (d / "gone.wav").symlink_to("nowhere.wav")
    run_corpus("card", audio_dir="music", clip_s=10.0)
    card = json.loads(RunLayout("card").corpus_card.read_text())
    assert card["kind"] == "folder" and card["source"] == str(d) and card["n_clips"] == 20 and card["n_files"] == 10
    assert card["splits"] == {"train": 16, "val": 2, "test": 2} and card["files_per_split"] == {"train": 8, "val": 1, "test": 1}
    assert card["minutes"] == pytest.approx(20 * 10 / 60, abs=0.01)
    assert card["n_skipped"] == 3 and card["skipped_reasons"] == {"empty file": 1, "silent": 1, "broken symlink": 1}
    assert card["args"]["clip_s"] == 10.0 and len(card["stamp"]["id"]) == 16


def test_folder_labels_come_from_subfolders_and_sidecars(tmp_path):
    # defect: a flat folder gave the concept folder=. that every clip has
    flat = tmp_path / "flat"
    tone_file(flat / "a.wav", 440.0, 2.0); tone_file(flat / "b.wav", 550.0, 2.0)
    man, _ = build_folder_manifest(flat)
    assert concept_matrix(man).shape == (2, 0)
    # tags.csv: facet columns (';' for several values) and free tags
    (flat / "tags.csv").write_text("file,genre,tags\na.wav,jazz;blues,live\nb.wav,rock,\nnot-here.wav,pop,\n")
    man, skipped = build_folder_manifest(flat)
    cm = concept_matrix(man)
    assert cm.to_dict("index") == {"a_000": {"genre=blues": True, "genre=jazz": True, "genre=rock": False, "tags=live": True},
                                   "b_000": {"genre=blues": False, "genre=jazz": False, "genre=rock": True, "tags=live": False}}
    assert skipped.empty  # the sidecar is not an audio file to skip
    # tags.json, keyed by the path below the folder, beside sub-folder labels
    nested = tmp_path / "nested"
    tone_file(nested / "Live" / "c.ogg", 440.0, 2.0); tone_file(nested / "d.wav", 550.0, 2.0)
    (nested / "tags.json").write_text(json.dumps({"Live/c.ogg": {"mood": ["calm", "dark"], "instrument": "piano"}}))
    cm = concept_matrix(build_folder_manifest(nested)[0])
    assert cm.loc["Live__c_000"].to_dict() == {"folder=Live": True, "instrument=piano": True, "mood=calm": True, "mood=dark": True}
    assert not cm.loc["d_000"].any()


def test_run_corpus_from_a_manifest(repo):
    ext = repo / "corpora" / "set"
    tone_file(ext / "clips" / "x.wav", 440.0, 10.0); tone_file(ext / "clips" / "y.flac", 660.0, 10.0)
    df = pd.DataFrame(dict(id=["x0", "y0", "z0"], path=["clips/x.wav", str(ext / "clips" / "y.flac"), "clips/z.wav"],
                           start=[0.0, 0.0, 0.0], duration=[10.0, 10.0, 10.0], split=["train", "val", "test"],
                           labels=[{"caption": "a"}, {"caption": "b"}, {}]))
    write_manifest(df, ext / "manifest.csv")
    man = run_corpus("m", manifest_path="corpora/set/manifest.csv")  # relative to the repository root
    assert man.attrs["corpus"] == "manifest" and man["id"].tolist() == ["x0", "y0"]
    assert man["path"].tolist() == [str(ext.resolve() / "clips/x.wav"), str(ext / "clips" / "y.flac")]
    assert peak_hz(load_clip(man.iloc[0])) == 440
    skipped = pd.read_parquet(RunLayout("m").skipped)
    assert skipped[["id", "reason"]].values.tolist() == [["z0", "file not found"]]


def test_run_corpus_errors_name_the_path(repo):
    with pytest.raises(FileNotFoundError, match=r"no-such-folder: no such folder"):
        run_corpus("e", audio_dir="no-such-folder")
    with pytest.raises(FileNotFoundError, match=r"nothing\.parquet: no such file"):
        run_corpus("e", manifest_path="nothing.parquet")
    d = repo / "junk"; d.mkdir()
    (d / "empty.wav").touch(); (d / "notes.txt").write_text("hi"); tone_file(d / "tiny.wav", 440.0, 0.2)
    with pytest.raises(ValueError, match=r"junk: no usable audio") as e:
        run_corpus("e", audio_dir="junk")
    msg = str(e.value)
    assert "empty.wav: empty file" in msg and "notes.txt: not an audio file" in msg and "tiny.wav: too short" in msg
    with pytest.raises(ValueError, match="holds no files"):
        (repo / "void").mkdir(); run_corpus("e", audio_dir="void")


def test_run_corpus_demo(repo):
    man = run_corpus("d", n_clips=4, seed=2)
    assert man.attrs["corpus"] == "demo" and len(man) == 4 and set(LABEL_KEYS) <= set(man.columns)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in man["path"])
    demo = read_manifest(repo / "data" / "demo-4-2" / "manifest.parquet")
    assert man["id"].tolist() == demo["id"].tolist()
    x = load_clip(man.iloc[0]); y = load_clip(demo.iloc[0], demo.attrs["root"])
    np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- the example folder


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return example_music_folder(tmp_path_factory.mktemp("example") / "My Music", seed=0)


def test_example_music_folder(example):
    d = example
    formats = {n: (i.format, i.samplerate, i.channels) for n in ("Bach chorales/Chorale 1.ogg", "Folk tunes/Tune 1.mp3", "Organ chorale.wav")
               for i in [sf.info(str(d / n))]}
    assert formats == {"Bach chorales/Chorale 1.ogg": ("OGG", 48000, 2), "Folk tunes/Tune 1.mp3": ("MP3", 22050, 1),
                       "Organ chorale.wav": ("WAV", 44100, 2)}
    assert (d / "Favourites" / "Chorale 1.ogg").is_symlink() and not (d / "Favourites" / "Lost.mp3").exists()
    man, skipped = build_folder_manifest(d)
    assert man["path"].nunique() == 14 and man["id"].is_unique
    assert {"Song_ogg_000", "Song_mp3_000"} <= set(man["id"]) and (man["id"].str.startswith("a__b_ogg-")).sum() >= 4
    lengths = man.groupby("path")["duration"].sum()
    assert lengths.between(19.0, 32.0).all(), lengths
    reasons = {Path(p).relative_to(d).as_posix(): data._reason_kind(r) for p, r in zip(skipped["path"], skipped["reason"])}
    assert reasons == {"Broken download.wav": "cannot decode audio", "empty.ogg": "empty file", "silence 8k.wav": "silent",
                       "click.wav": "too short", "cover.jpg": "not an audio file", "Favourites/Chorale 1.ogg": "duplicate",
                       "Favourites/Lost.mp3": "broken symlink"}
    assert set(man.groupby("path")["split"].first().value_counts().index) == {"train", "val", "test"}
    cm = concept_matrix(man)
    assert {"folder=Bach chorales", "folder=Folk tunes", "composer=J. S. Bach", "composer=traditional", "tags=chorale"} <= set(cm.columns)
    assert cm["folder=Bach chorales"].sum() >= 8 and (cm["composer=J. S. Bach"] | cm["composer=traditional"]).all()
    # real music: every clip is at the renderer's loudness and tonal (a flat spectrum would be noise)
    for cid in man["id"][::4]:
        x = clip_of(man, cid, d)
        power = np.abs(np.fft.rfft(x)) ** 2 + 1e-12
        assert -30 < 20 * np.log10(np.sqrt(np.mean(x ** 2))) < -15
        assert np.exp(np.mean(np.log(power))) / power.mean() < 0.05  # spectral flatness: white noise ≈ 0.56
        assert power[: len(power) * 4000 // (SR // 2)].sum() > 0.9 * power.sum()


def test_heldout_fraction_is_chosen_once_and_kept_by_later_stages(repo, monkeypatch):
    "Issue 13: the demo's held-out set must grow (≥ 300 tracks); 01 chooses it, stages that do not pass it keep it."
    d = repo / "music"
    for i in range(8): tone_file(d / f"f{i}.wav", 300.0 + 40 * i, 3.0)
    man = run_corpus("h", audio_dir="music", heldout_fraction=0.5)
    assert Counter(man.groupby("path").split.first()) == {"train": 4, "val": 2, "test": 2}   # per file, balanced
    calls = []
    real = data.build_folder_manifest
    monkeypatch.setattr(data, "build_folder_manifest", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_corpus("h", audio_dir="music")                      # a later stage: no heldout_fraction, no rebuild
    assert calls == [] and again.split.tolist() == man.split.tolist()
    assert json.loads(RunLayout("h").corpus_card.read_text())["args"]["heldout_fraction"] == 0.5
    assert Counter(run_corpus("h", audio_dir="music", heldout_fraction=0.0).groupby("path").split.first())["train"] == 6
    pd.DataFrame(dict(id=["a"], path=[str(d / "f0.wav")], start=[0.0], duration=[3.0], split=["train"], labels=["{}"])).to_csv(repo / "m.csv", index=False)
    with pytest.raises(ValueError, match="keeps its own splits"): run_corpus("h2", manifest_path="m.csv", heldout_fraction=0.5)


def test_heldout_fraction_redeals_the_demo_stratified(repo):
    man = run_corpus("dm", n_clips=40, heldout_fraction=0.5)
    assert Counter(man.split) == {"train": 20, "val": 10, "test": 10}
    g = man.groupby("texture").split
    by = g.apply(lambda s: (s == "train").mean())[g.size() >= 4]
    assert len(by) >= 3 and by.between(0.3, 0.7).all()              # every common texture on both sides
