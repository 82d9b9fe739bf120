"""musicsae.audio: the one audio I/O and DSP module (resample, read/write, levels, mel filterbank, spectrogram plot)."""
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicsae.audio import (SR, AudioError, audio_info, load_audio, mel_filterbank, plot_spectrogram, read_audio, resample,
                            write_audio)


def tone(freq, dur, sr, amp=0.3):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(round(dur * sr))) / sr)).astype(np.float32)


# ---------------------------------------------------------------- writing


@pytest.mark.parametrize("n", [1000, 70000])  # one block, and several blocks of 32768 frames
def test_write_audio_writes_the_bytes_soundfile_writes(tmp_path, n):
    # defect: WAV writing was re-done about six times; the one writer must keep the bytes (Gemini's cache keys hash them)
    x = tone(440.0, n / SR, SR)
    ref = io.BytesIO(); sf.write(ref, x, SR, format="WAV", subtype="PCM_16")
    assert write_audio(tmp_path / "a.wav", x, SR, subtype="PCM_16").read_bytes() == ref.getvalue()
    buf = write_audio(io.BytesIO(), x, SR, format="WAV", subtype="PCM_16")
    assert buf.getvalue() == ref.getvalue()
    stereo = np.stack([x, 0.5 * x], 1).astype(np.float64)  # float64 stays float64, as soundfile.write takes it
    ref = io.BytesIO(); sf.write(ref, stereo, 44100, format="FLAC")
    assert write_audio(tmp_path / "b.flac", stereo, 44100).read_bytes() == ref.getvalue()


def test_write_audio_is_atomic(tmp_path, monkeypatch):
    # defect: the demo corpus and other writers wrote in place; a crash left a truncated file that read as a short clip
    p = tmp_path / "sub" / "clip.wav"
    write_audio(p, tone(440.0, 1.0, SR), SR, subtype="PCM_16")
    before = p.read_bytes()
    real_write = sf.SoundFile.write
    calls = []
    def failing(self, data):
        calls.append(len(data))
        if len(calls) == 2: raise OSError("disk full")
        return real_write(self, data)
    monkeypatch.setattr(sf.SoundFile, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        write_audio(p, tone(220.0, 3.0, SR), SR, subtype="PCM_16")  # 96000 frames: the second block fails
    assert p.read_bytes() == before  # the old file, untouched
    assert sorted(q.name for q in p.parent.iterdir()) == ["clip.wav"]  # and no temp file left behind


def test_write_audio_gives_the_umask_mode(tmp_path):
    # defect: mkstemp's 0600 would make the file unreadable to the rest of the group
    old = os.umask(0o022)
    try: p = write_audio(tmp_path / "m.wav", tone(440.0, 0.1, SR), SR)
    finally: os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_long_vorbis_write_in_blocks(tmp_path):
    # defect: libsndfile 1.2's Vorbis encoder crashes on one long write; blocks avoid it
    x = np.stack([tone(330.0, 40.0, 48000), tone(330.0, 40.0, 48000)], 1)
    p = write_audio(tmp_path / "long.ogg", x, 48000, format="OGG", subtype="VORBIS")
    info = audio_info(p)
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, len(x))
    y = load_audio(p, offset=20.0, duration=1.0)
    ref = tone(330.0, 21.0, SR)[20 * SR:]
    assert np.corrcoef(y[1000:-1000], ref[1000:-1000])[0, 1] > 0.99


# ---------------------------------------------------------------- reading


def test_read_audio_mean_of_channels_at_its_rate_or_resampled(tmp_path):
    # defect: steering, the browser and the Gemini stand-in each read files their own way (2-D for stereo in one)
    l, r = tone(440.0, 1.0, 44100, 0.4), tone(660.0, 1.0, 44100, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([l, r], 1), 44100, subtype="FLOAT")
    x, rate = read_audio(tmp_path / "s.wav")
    assert rate == 44100 and x.dtype == np.float32 and x.ndim == 1
    np.testing.assert_array_equal(x, np.stack([l, r], 1).mean(axis=1))
    y, rate = read_audio(str(tmp_path / "s.wav"), sr=SR)
    assert rate == SR and len(y) == SR
    np.testing.assert_array_equal(y, load_audio(tmp_path / "s.wav"))  # the same samples as a clip loaded at 32 kHz
    z, rate = read_audio(io.BytesIO((tmp_path / "s.wav").read_bytes()))
    assert rate == 44100 and np.array_equal(z, x)


def test_read_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="missing.wav: file not found"): read_audio(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(AudioError, match="bad.wav: cannot decode audio"): read_audio(tmp_path / "bad.wav")
    with pytest.raises(AudioError, match="<audio in memory>: cannot decode"): read_audio(io.BytesIO(b"nothing"))


def test_resample_keeps_the_tone():
    x = tone(1000.0, 1.0, 44100)
    y = resample(x, 44100, SR)
    assert y.dtype == np.float32 and len(y) == SR
    np.testing.assert_allclose(y[500:-500], tone(1000.0, 1.0, SR)[500:-500], atol=1e-3)
    assert np.array_equal(resample(x, 44100, 44100), x)


# ---------------------------------------------------------------- mel filterbank


def test_mel_filterbank_matches_librosa():
    # the codec's and the demo tagger's filterbank (moved from the demo model's module) against an independent implementation
    librosa = pytest.importorskip("librosa")
    fb = mel_filterbank(32000, 2048, 128).numpy()
    ref = librosa.filters.mel(sr=32000, n_fft=2048, n_mels=128, htk=True, norm="slaney")
    np.testing.assert_allclose(fb, ref, rtol=1e-4, atol=1e-8)
    peak = mel_filterbank(16000, 512, 40, fmin=30.0, area_norm=False, dtype=__import__("torch").float64).numpy()
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=30.0, htk=True, norm=None, dtype=np.float64)
    np.testing.assert_allclose(peak, ref, rtol=1e-9, atol=1e-12)


def test_mel_filterbank_reference_numbers():
    # the numbers before the move (the demo model's mel_filterbank): the demo model's weights were fitted with them
    import torch
    fb = mel_filterbank(32000, 2048, 128)
    assert fb.dtype == torch.float32 and fb.shape == (128, 1025)
    assert float(fb.sum()) == pytest.approx(8.189443588256836, rel=1e-6)
    assert float(fb[10].sum()) == pytest.approx(0.06905610859394073, rel=1e-6)
    peak = mel_filterbank(16000, 512, 40, fmin=30.0, area_norm=False, dtype=torch.float64)
    assert float(peak.sum()) == pytest.approx(246.0712810556081, rel=1e-12)
    assert peak.argmax(1)[:10].tolist() == [2, 4, 6, 7, 9, 11, 13, 15, 18, 20]


# ---------------------------------------------------------------- spectrogram


def test_plot_spectrogram():
    # defect: three copies (features, browser, steering) drew spectrograms with their own settings
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    ax = Figure().subplots()
    S, f, t, _ = plot_spectrogram(ax, tone(1000.0, 2.0, SR), SR, fmax=8000, title="1 kHz")
    assert S.shape[0] == 513 and f[1] - f[0] == SR / 1024  # 1024-sample windows
    assert f[S.mean(1).argmax()] == 1000.0 and ax.get_ylim() == (0, 8000) and ax.get_title() == "1 kHz"
    assert len(t) == (2 * SR - 1024) // 256 + 1  # 3/4 overlap
    S, f, t, _ = plot_spectrogram(Figure().subplots(), tone(1000.0, 0.05, SR), SR)  # 1600 samples: a shorter window
    assert S.shape[0] == 129 and len(t) >= 4
