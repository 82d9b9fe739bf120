"""musicsae.data: audio loading, manifests of real corpora, and the demo corpus (real audio the tests write)."""
import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from musicsae.audio import SR, AudioError, is_silent, load_audio, spectral_flux
from musicsae.data import (
    build_folder_manifest, clip_labels, clip_windows, concept_matrix, load_clip, read_manifest, stratified_splits, write_manifest)
from musicsae.datasets import build_jamendo_manifest, build_musiccaps_manifest, build_musicset_manifest
from musicsae.demo.corpus import LABEL_KEYS, build_demo_corpus, demo_clip_spec, demo_corpus, render_demo_clip
from musicsae.midi import TEXTURES


def tone(freqs, dur, sr, amp=0.3):
    "One channel per frequency: amp * sin(2 pi f t)."
    t = np.arange(int(round(dur * sr))) / sr
    return np.stack([amp * np.sin(2 * np.pi * f * t) for f in freqs], axis=1)


def reference(freqs, dur, sr=SR, amp=0.3):
    "What load_audio should return for tone(freqs): the channel mean on the 32 kHz grid."
    return tone(freqs, dur, sr, amp).mean(axis=1)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt,subtype,rate,freqs,tol", [
    ("wav", "FLOAT", 44100, [440.0, 1000.0], 2e-3),
    ("wav", "PCM_16", 48000, [440.0], 2e-3),
    ("wav", "PCM_24", 22050, [300.0, 500.0, 700.0], 2e-3),
    ("flac", "PCM_16", 16000, [440.0, 1000.0], 2e-3),
    ("flac", "PCM_24", 32000, [440.0], 1e-4),
])
def test_lossless_round_trip_matches_reference(tmp_path, fmt, subtype, rate, freqs, tol):
    p = tmp_path / f"x.{fmt}"
    sf.write(p, tone(freqs, 2.0, rate), rate, subtype=subtype)
    x = load_audio(p)
    ref = reference(freqs, 2.0)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == len(ref)
    # away from the edges (the resampler's filter has no signal beyond them) the samples match the analytic tone
    np.testing.assert_allclose(x[800:-800], ref[800:-800], atol=tol)


@pytest.mark.parametrize("fmt,rate", [("ogg", 44100), ("mp3", 48000)])
def test_lossy_round_trip_keeps_the_tones(tmp_path, fmt, rate):
    p = tmp_path / f"x.{fmt}"
    sf.write(p, tone([440.0, 1000.0], 3.0, rate), rate)
    x = load_audio(p)
    assert abs(len(x) / SR - 3.0) < 0.1
    spec = np.abs(np.fft.rfft(x[SR // 2: SR // 2 + SR]))  # 1 s → 1 Hz bins
    top = sorted(np.argsort(spec)[-2:].tolist())
    assert top == [440, 1000]
    if fmt == "ogg":  # vorbis keeps the timing: compare the waveform
        ref = reference([440.0, 1000.0], 3.0)
        n = min(len(x), len(ref))
        assert np.corrcoef(x[1000:n - 1000], ref[1000:n - 1000])[0, 1] > 0.99


def test_offset_and_duration(tmp_path):
    p = tmp_path / "x.wav"
    sig = np.concatenate([tone([440.0], 1.0, 16000), tone([880.0], 1.0, 16000)])
    sf.write(p, sig, 16000, subtype="FLOAT")
    x = load_audio(p, offset=1.25, duration=0.5)
    assert len(x) == SR // 2
    spec = np.abs(np.fft.rfft(x))
    assert np.argmax(spec) * 2 == 880  # 0.5 s → 2 Hz bins


def test_bad_files_raise_named_errors(tmp_path):
    (tmp_path / "empty.wav").touch()
    (tmp_path / "noise.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "text.ogg").write_text("not audio at all")
    good = tmp_path / "good.wav"
    sf.write(good, tone([440.0], 2.0, 32000), 32000)
    (tmp_path / "truncated.wav").write_bytes(good.read_bytes()[:30])
    nan = tone([440.0], 0.5, 32000); nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 32000, subtype="FLOAT")
    cases = {"empty.wav": "empty file", "noise.flac": "cannot decode", "text.ogg": "cannot decode",
             "truncated.wav": "", "nan.wav": "NaN", "missing.wav": "not found"}
    for name, reason in cases.items():
        with pytest.raises(AudioError) as e:
            load_audio(tmp_path / name)
        assert name in str(e.value) and reason in str(e.value), str(e.value)
    with pytest.raises(AudioError, match=r"good\.wav: too short: 2\.00 s < min_duration 5\.00 s"):
        load_audio(good, min_duration=5.0)


def test_silence_is_flagged_not_an_error(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(32000), 32000)
    sf.write(tmp_path / "tone.wav", tone([440.0], 1.0, 32000), 32000)
    x = load_audio(tmp_path / "silent.wav")
    assert is_silent(x) and not is_silent(reference([440.0], 1.0))
    man, skipped = build_folder_manifest(tmp_path, out=None, skip_silent=False)
    labels = {i: json.loads(l) for i, l in zip(man["id"], man["labels"])}
    assert labels["silent_000"]["silent"] is True and "silent" not in labels["tone_000"] and skipped.empty


# ---------------------------------------------------------------- manifests


def test_manifest_round_trip_and_checks(tmp_path):
    df = pd.DataFrame(dict(id=["a", "b"], path=["x.wav", "/abs/y.wav"], start=[0, 1.5], duration=[10, 2.5],
                           split=["train", "val"], labels=[{"genre": ["rock"]}, None]))
    for ext in ("parquet", "csv"):
        back = read_manifest(write_manifest(df, tmp_path / f"m.{ext}"))
        assert back["id"].tolist() == ["a", "b"] and back["start"].tolist() == [0.0, 1.5]
        assert clip_labels(back.iloc[0]) == {"genre": ["rock"]} and clip_labels(back.iloc[1]) == {}
    with pytest.raises(ValueError, match="duplicate clip ids"):
        write_manifest(df.assign(id="a"), tmp_path / "dup.parquet")
    pd.DataFrame(dict(id=["a"])).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: manifest lacks columns"):
        read_manifest(tmp_path / "bad.csv")


def test_clip_windows():
    assert clip_windows(25.0, 10.0) == [(0.0, 10.0), (10.0, 10.0)]
    assert clip_windows(3.0, 10.0, min_duration=1.0) == [(0.0, 3.0)]
    assert clip_windows(0.5, 10.0, min_duration=1.0) == []
    assert [s for s, _ in clip_windows(100.0, 10.0, max_clips=3)] == [0.0, 40.0, 90.0]


def test_folder_manifest_lists_every_file_or_why_not(tmp_path):
    d = tmp_path / "music"; (d / "sub").mkdir(parents=True)
    sf.write(d / "long.wav", np.concatenate([tone([440.0], 10.0, 16000), tone([660.0], 15.0, 16000)]), 16000)
    sf.write(d / "short.flac", tone([440.0, 550.0], 3.0, 22050), 22050)
    sf.write(d / "sub" / "b.ogg", tone([330.0], 10.5, 44100), 44100)
    sf.write(d / "tiny.wav", tone([440.0], 0.3, 16000), 16000)
    sf.write(d / "silent.wav", np.zeros((12 * 16000, 2)), 16000)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (d / "empty.ogg").touch()
    (d / "notes.txt").write_text("liner notes")
    man, skipped = build_folder_manifest(d, out="manifest.parquet", clip_s=10.0, min_duration=1.0)  # asked to write there
    files = {p.name for p in d.rglob("*") if p.is_file() and p.name not in ("manifest.parquet", "skipped.parquet")}
    listed = {Path(p).name for p in man["path"]} | {Path(p).name for p in skipped["path"]}
    assert listed == files and len(files) == 8
    assert sorted(man["id"]) == ["long_000", "long_001", "short_000", "sub__b_000"]
    assert man.set_index("id").loc["short_000", "duration"] == pytest.approx(3.0)
    reasons = dict(zip(skipped["path"].map(lambda p: Path(p).name), skipped["reason"]))
    assert reasons["tiny.wav"].startswith("too short") and reasons["silent.wav"].startswith("silent")
    assert "cannot decode" in reasons["corrupt.wav"] and "empty" in reasons["empty.ogg"]
    assert reasons["notes.txt"].startswith("not an audio file")
    assert man.groupby(man["path"])["split"].nunique().max() == 1  # clips of one file share a split
    # written next to the folder's files, and the clips load back with the right content
    back = read_manifest(d / "manifest.parquet")
    assert len(back) == 4 and len(pd.read_parquet(d / "skipped.parquet")) == len(skipped)
    x = load_clip(back.set_index("id").loc["long_001"].rename("long_001").to_dict() | {"id": "long_001"}, d)
    np.testing.assert_allclose(x[800:-800], reference([660.0], 10.0)[800:-800], atol=2e-3)
    assert json.loads(back.set_index("id").loc["sub__b_000", "labels"])["folder"] == "sub"
    # a rebuild does not list its own output tables as skipped files
    assert len(build_folder_manifest(d, out="manifest.parquet")[1]) == len(skipped)


def test_jamendo_layout(tmp_path):
    root = tmp_path / "mtg-jamendo"
    (root / "data" / "splits" / "split-0").mkdir(parents=True)
    (root / "raw_30s" / "audio" / "14").mkdir(parents=True); (root / "raw_30s" / "audio" / "00").mkdir(parents=True)
    sf.write(root / "raw_30s/audio/14/214.mp3", tone([440.0, 660.0], 21.0, 44100), 44100)
    sf.write(root / "raw_30s/audio/00/1000.low.mp3", tone([330.0], 12.0, 44100), 44100)
    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"
    rows = ["track_0000214\tartist_000014\talbum_000031\t14/214.mp3\t21.0\tgenre---punkrock\tinstrument---guitar\tmood/theme---energetic",
            "track_0001000\tartist_000002\talbum_000007\t00/1000.mp3\t12.0\tgenre---ambient",
            "track_0000999\tartist_000002\talbum_000007\t99/999.mp3\t40.0\tgenre---rock"]
    (root / "data" / "autotagging.tsv").write_text(header + "\n".join(rows) + "\n")
    (root / "data/splits/split-0/autotagging-train.tsv").write_text(header + rows[0] + "\n")
    (root / "data/splits/split-0/autotagging-test.tsv").write_text(header + rows[1] + "\n")
    man, skipped = build_jamendo_manifest(root)
    assert sorted(man["id"]) == ["track_0000214_000", "track_0000214_001", "track_0001000_000"]
    assert dict(zip(man["id"], man["split"]))["track_0001000_000"] == "test"
    assert set(man[man["id"].str.startswith("track_0000214")]["split"]) == {"train"}
    lab = json.loads(man.set_index("id").loc["track_0000214_000", "labels"])
    assert lab["tags"] == {"genre": ["punkrock"], "instrument": ["guitar"], "mood/theme": ["energetic"]}
    assert skipped[["path", "reason"]].values.tolist() == [[str(root / "raw_30s/audio/99/999.mp3"), "file not found"]]
    cm = concept_matrix(man)
    assert cm.loc["track_0000214_001", "genre=punkrock"] and cm.loc["track_0000214_001", "mood/theme=energetic"]
    assert (root / "manifest.parquet").is_file()


def test_musiccaps_layout(tmp_path):
    root = tmp_path / "musiccaps"; (root / "audio").mkdir(parents=True)
    sf.write(root / "audio" / "abc123.wav", tone([440.0], 10.0, 48000), 48000)  # the 10 s excerpt
    full = np.concatenate([tone([220.0], 30.0, 16000), tone([880.0], 10.0, 16000), tone([220.0], 5.0, 16000)])
    sf.write(root / "audio" / "full_vid.flac", full, 16000)  # the whole video's audio: read [30, 40]
    pd.DataFrame(dict(
        ytid=["abc123", "full_vid", "gone"], start_s=[30, 30, 0], end_s=[40, 40, 10],
        audioset_positive_labels=["['/m/04rlf']"] * 3,
        aspect_list=["['pop', 'mellow piano melody']", "['rock', 'loud drums']", "['jazz']"],
        caption=["A mellow pop song.", "Loud rock.", "Jazz."], author_id=[1, 2, 3],
        is_balanced_subset=[False, True, False], is_audioset_eval=[True, False, False],
    )).to_csv(root / "musiccaps-public.csv", index=False)
    man, skipped = build_musiccaps_manifest(root)
    m = man.set_index("id")
    assert list(m.index) == ["abc123_000", "full_vid_000"] and skipped["reason"].tolist() == ["file not found"]
    assert m.loc["abc123_000", "split"] == "test" and m.loc["full_vid_000", "split"] in ("train", "val")
    assert m.loc["full_vid_000", "start"] == 30.0 and m.loc["full_vid_000", "duration"] == pytest.approx(10.0)
    x = load_clip(dict(m.loc["full_vid_000"]) | {"id": "full_vid_000"}, root)
    assert np.argmax(np.abs(np.fft.rfft(x[:SR]))) == 880
    lab = json.loads(m.loc["abc123_000", "labels"])
    assert lab["aspects"] == ["pop", "mellow piano melody"] and lab["caption"] == "A mellow pop song."
    assert "caption=A mellow pop song." not in concept_matrix(man).columns and concept_matrix(man).loc["abc123_000", "aspects=pop"]


def test_musicset_layout(tmp_path):
    root = tmp_path / "musicset"; (root / "clips").mkdir(parents=True)
    sf.write(root / "clips" / "a.wav", tone([440.0], 10.0, 32000), 32000)
    sf.write(root / "clips" / "b.mp3", tone([220.0], 9.5, 44100), 44100)
    recs = [dict(audio="clips/a.wav", caption="calm piano", source="musicbench", split="train"),
            dict(audio="clips/b.mp3", caption="deep bass", source="mtg_jamendo"),
            dict(audio="clips/c.wav", caption="lost")]
    (root / "musicset.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    man, skipped = build_musicset_manifest(root)
    assert sorted(man["id"]) == ["clips__a_000", "clips__b_000"] and skipped["path"].str.endswith("c.wav").all()
    labs = {i: json.loads(l) for i, l in zip(man["id"], man["labels"])}
    assert labs["clips__a_000"] == {"caption": "calm piano", "source": "musicbench"}
    assert man.set_index("id").loc["clips__a_000", "split"] == "train"


# ---------------------------------------------------------------- the demo corpus


def _hashes(df, root):
    return {r.id: hashlib.sha1((Path(root) / r.path).read_bytes()).hexdigest() for r in df.itertuples()}


def test_demo_corpus_is_deterministic_and_labelled(tmp_path):
    a = build_demo_corpus(tmp_path / "a", n_clips=12, seed=5, n_jobs=1)
    b = build_demo_corpus(tmp_path / "b", n_clips=12, seed=5, n_jobs=2)  # other processes, other order
    c = build_demo_corpus(tmp_path / "c", n_clips=4, seed=6, n_jobs=1)
    ha, hb = _hashes(a, tmp_path / "a"), _hashes(b, tmp_path / "b")
    assert ha == hb and len(set(ha.values())) == 12
    assert set(_hashes(c, tmp_path / "c").values()).isdisjoint(ha.values())
    pd.testing.assert_frame_equal(a.drop(columns="labels"), b.drop(columns="labels"))
    assert set(LABEL_KEYS) <= set(a.columns) and set(a["split"]) <= {"train", "val", "test"}
    for r in a.itertuples():
        lab = json.loads(r.labels)
        assert set(LABEL_KEYS) <= set(lab) and lab["instrument"] == r.instrument
        info = sf.info(str(tmp_path / "a" / r.path))
        assert info.samplerate == SR and info.channels == 1 and 4.0 <= info.duration <= 10.0
        assert abs(info.duration - r.duration) < 1e-3
    assert (a["texture"] == "drum_groove").eq(a["instrument"] == "drums").all()


def test_demo_corpus_cache(tmp_path):
    df = demo_corpus(6, seed=1, out_dir=tmp_path)
    wav = tmp_path / df["path"].iloc[0]
    mtime = wav.stat().st_mtime_ns
    again = demo_corpus(6, seed=1, out_dir=tmp_path)  # complete: read, not re-rendered
    assert wav.stat().st_mtime_ns == mtime and again["id"].tolist() == df["id"].tolist()
    (tmp_path / df["path"].iloc[3]).unlink()  # incomplete: rebuilt
    demo_corpus(6, seed=1, out_dir=tmp_path)
    assert (tmp_path / df["path"].iloc[3]).is_file()


def _first(texture, n, seed=0):
    return [i for i in range(500) if (s := demo_clip_spec(i, seed))["texture"] == texture and s["source"] == "synthetic"][:n]


def test_drums_have_more_onset_energy_than_held_notes():
    drums = [spectral_flux(render_demo_clip(i)[0]) for i in _first("drum_groove", 4)]
    held = [spectral_flux(render_demo_clip(i)[0]) for i in _first("sustained", 4)]
    assert min(drums) > 1.5 * max(held), (drums, held)


def test_concept_matrix_of_demo_labels():
    specs = [demo_clip_spec(i, 0) for i in range(300)]
    man = pd.DataFrame(dict(id=[f"c{i}" for i in range(300)], labels=[json.dumps(s) for s in specs]))
    cm = concept_matrix(man)
    assert cm.dtypes.eq(bool).all() and list(cm.index) == list(man["id"])
    tex = pd.Series([s["texture"] for s in specs], index=cm.index)
    for t in TEXTURES:
        assert (cm[f"texture={t}"] == (tex == t)).all()
    tempo = pd.Series([s["tempo"] for s in specs], index=cm.index)
    assert (cm["tempo=fast"] == (tempo >= 120)).all() and (cm["tempo=slow"] == (tempo < 90)).all()
    assert not any(c.startswith(("program=", "duration=", "i=")) for c in cm.columns)


def test_stratified_splits_are_8_1_1_within_groups():
    groups = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    s = pd.Series(stratified_splits(groups, seed=0))
    assert s.value_counts().to_dict() == {"train": 80, "val": 10, "test": 10}
    g = pd.Series(groups)
    for name in "abc":
        assert abs((s[g == name] == "train").mean() - 0.8) <= 0.1
    assert stratified_splits(groups, seed=0) == s.tolist()


# ---------------------------------------------------------------- the split of data.py


# sha256 of the rendered demo clips (float32 samples, 16-bit WAV files) and of the manifest's ids, splits and labels,
# computed before data.py was split into musicsae.data / musicsae.demo.corpus / musicsae.audio (DEMO_VERSION 2)
DEMO_WAV_SHA256 = {"demo00000": "6044de08113bcb0b", "demo00001": "b2cc5f0015cae6aa", "demo00002": "d33ca0a1ed6a845e",
                   "demo00003": "2057118c46e3cd51", "demo00004": "9a02c7bcda308d5d", "demo00005": "8c1cc762d4bb0bf4",
                   "demo00006": "a1c565dca1d71f8a", "demo00007": "8521ac08740400d1"}
DEMO_LABELS_SHA256 = "dc8e99af8d4f9c54"
DEMO_CLIP_SHA256 = {10: "014f53a561fe2286", 25: "c2c53224bd1d7c0c"}  # block chords, drum groove


def test_demo_corpus_renders_the_reference_bytes(tmp_path):
    # defect guarded: moving the synthesis out of data.py (and its WAV writes to audio.write_audio) must not change
    # one sample or label of the demo corpus: the demo model, SAEs and every reported number were made from it
    from musicsae.demo.corpus import DEMO_VERSION
    assert DEMO_VERSION == 2
    man = build_demo_corpus(tmp_path, n_clips=8, seed=0, n_jobs=1)  # sustained, melodies, arpeggios, a folk tune, a chorale
    assert {r.id: hashlib.sha256((tmp_path / r.path).read_bytes()).hexdigest()[:16] for r in man.itertuples()} == DEMO_WAV_SHA256
    assert hashlib.sha256(man[["id", "split", "labels"]].to_csv(index=False).encode()).hexdigest()[:16] == DEMO_LABELS_SHA256
    for i, h in DEMO_CLIP_SHA256.items():
        x, _ = render_demo_clip(i, 0)
        assert x.dtype == np.float32 and hashlib.sha256(x.tobytes()).hexdigest()[:16] == h, i


# every name imported from musicsae.data by the library, tools, tests and notebooks before the split
NAMES_IMPORTED_FROM_DATA = (
    "SR", "AUDIO_EXTS", "AudioError", "LABEL_KEYS", "TEXTURES", "INSTRUMENTS", "balanced_splits", "build_demo_corpus",
    "build_folder_manifest", "build_jamendo_manifest", "build_musiccaps_manifest", "build_musicset_manifest", "clip_labels",
    "clip_path", "clip_windows", "concept_matrix", "demo_caption", "demo_clip", "demo_clip_spec", "demo_corpus", "demo_dir",
    "example_music_folder", "is_silent", "load_audio", "load_clip", "read_manifest", "render_demo_clip", "resample",
    "run_corpus", "sample_clips", "spectral_flux", "stratified_splits", "unique_keys", "write_manifest", "write_audio",
    "rms_db", "audio_length", "normalize_loudness", "tempo_bin", "register_of", "DEMO_VERSION", "soundfont_path",
    "render_midi", "_reason_kind")
# those that moved to the demo corpus's module (01a, musicsae.demo.corpus)
DEMO_CORPUS_NAMES = ("LABEL_KEYS", "build_demo_corpus", "demo_caption", "demo_clip", "demo_clip_spec",
                     "demo_corpus", "demo_dir", "example_music_folder", "render_demo_clip", "DEMO_VERSION")
# and those that moved on from there to the MIDI module both corpora share (01c, musicsae.midi)
MIDI_NAMES = ("TEXTURES", "INSTRUMENTS", "register_of", "soundfont_path", "render_midi")


def test_every_old_data_name_has_a_home_and_data_does_not_load_the_demo():
    # defect guarded: data.py mixed I/O, manifests and MIDI synthesis; after the split every old name is importable from
    # its home (musicsae.data, .demo.corpus, .midi, .datasets or .audio), data hands out no demo-corpus names any more (its re-export
    # shim let callers keep importing from the old place), and reading a folder of music does not import the synthesiser
    # (no module-level import of the demo corpus: no cycle)
    import subprocess, sys
    code = ("import sys, musicsae.data as d; assert 'musicsae.demo.corpus' not in sys.modules, 'data imports the demo corpus'; "
            "import musicsae.demo.corpus as dc, musicsae.midi as mi, musicsae.audio as a, musicsae.datasets as ds; "
            f"homeless = [n for n in {NAMES_IMPORTED_FROM_DATA!r} if not any(hasattr(m, n) for m in (d, dc, mi, a, ds))]; "
            "assert not homeless, homeless; "
            f"shimmed = [n for n in {DEMO_CORPUS_NAMES!r} if hasattr(d, n) or not hasattr(dc, n)]; assert not shimmed, shimmed; "
            f"shimmed = [n for n in {MIDI_NAMES!r} if hasattr(d, n) or not hasattr(mi, n)]; assert not shimmed, shimmed; "
            "assert not hasattr(d, '__getattr__'); "
            "assert d.load_audio is a.load_audio and d.SR == a.SR == dc.SR == 32000")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    import musicsae.data as d
    with pytest.raises(AttributeError, match="has no attribute 'render_demo_clip'"): d.render_demo_clip


def test_data_never_imports_the_demo_which_registers_itself():
    # defect (issue 25): run_corpus imported the demo corpus inside the function while the demo corpus imports data (an
    # import circle); now data names the demo's builder ('musicsae.demo.corpus:demo_corpus') and imports it on first use
    import musicsae.data as D
    tree = ast.parse(Path(D.__file__).read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
           {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in mods if m and "demo" in m}, mods
    code = ("import sys, musicsae.data as d; assert not [m for m in sys.modules if m.startswith('musicsae.demo')]; "
            "s = d.corpus_source('demo'); "
            "import musicsae.demo.corpus as dc; assert s == dict(build=dc.demo_corpus, strata=('source', 'texture', 'instrument'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with pytest.raises(ValueError, match="unknown corpus source 'nope'"): D.corpus_source("nope")
    D.register_corpus_source("_lazy", "json")          # a module that registers nothing is an error naming it
    try:
        with pytest.raises(RuntimeError, match="module json did not register the '_lazy' corpus source"): D.corpus_source("_lazy")
    finally: del D._SOURCES["_lazy"]
    D.register_corpus_source("_named", "json:dumps", strata=("a",))   # 'module:function' names the builder itself
    try: assert D.corpus_source("_named") == dict(build=json.dumps, strata=("a",))
    finally: del D._SOURCES["_named"]
