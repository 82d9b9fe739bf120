"""Gemini labeler: the real google-genai client against a local HTTP server that speaks the Gemini REST API."""
import base64
import json
import os

import numpy as np
import pytest

pytest.importorskip("google.genai", reason="google-genai not installed (pip install 'musicsae[gemini]')")
from musicsae import label_gemini as lg

SECRET = "AIzaSy-THIS-IS-A-TEST-SECRET-7c1e9"
SR = 16000


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)


def hdr(req, name):
    return {k.lower(): v for k, v in req["headers"].items()}[name]


def clip(f=220.0, secs=0.5):
    t = np.arange(int(secs * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def labeler(srv, tmp_path, **kw):
    return lg.GeminiLabeler("gemini-1.5-flash", cache_dir=tmp_path / "cache", base_url=srv.url, backoff_s=0.01, **kw)


GOOD = {"concepts": [{"name": "Cello", "confidence": 0.9, "description": "bowed low strings"},
                     {"name": "legato", "confidence": 0.4, "description": "smooth phrasing"}],
        "overall_summary": "solo cello, legato", "overall_name": "Solo cello", "overall_confidence": 0.8}


def test_success_request_shape_and_candidates(key, tmp_path):
    audio = lg.concat_clips([clip(220), clip(330)], SR, seed=3)
    with lg.LocalGeminiServer([("ok", GOOD)]) as srv:
        rec = labeler(srv, tmp_path).label(audio, SR)
    assert rec["status"] == "ok" and rec["labels"] == GOOD and rec["cached"] is False
    (req,) = srv.requests
    assert req["path"].endswith("/models/gemini-1.5-flash:generateContent")
    assert hdr(req, "x-goog-api-key") == SECRET
    parts = req["body"]["contents"][0]["parts"]
    assert parts[0]["text"] == lg.load_prompt()
    assert (parts[1]["inlineData"].get("mimeType") or parts[1]["inlineData"].get("mime_type")) == "audio/wav", parts[1]["inlineData"].keys()
    data = parts[1]["inlineData"]["data"]  # base64 (the client sends it url-safe, unpadded)
    assert base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)) == lg.wav_bytes(audio, SR)
    gc = req["body"]["generationConfig"]
    assert gc["responseMimeType"] == "application/json"
    assert "overall_confidence" in json.dumps(gc.get("responseSchema") or gc.get("responseJsonSchema"))
    c = lg.gemini_candidates(rec)
    assert [(x["label"], x["score"]) for x in c] == [("Solo cello", 0.8), ("Cello", 0.9), ("legato", 0.4)]
    assert all(x["source"] == "gemini" and x["model"] == "gemini-1.5-flash" for x in c)


def test_429_then_success_retries_and_caches(key, tmp_path):
    with lg.LocalGeminiServer([("http", 429), ("http", 503), ("ok", GOOD)]) as srv:
        g = labeler(srv, tmp_path)
        rec = g.label(clip(), SR)
        again = g.label(clip(), SR)
        other_model = lg.GeminiLabeler("gemini-2.0-flash", cache_dir=tmp_path / "cache", base_url=srv.url).label(clip(), SR)
    assert rec["status"] == "ok" and g.n_requests == 3
    assert again["cached"] is True and again["labels"] == GOOD          # no new request for the same (model, prompt, audio)
    assert len(srv.requests) == 4 and other_model["cached"] is False   # another model is another key
    assert srv.requests[-1]["path"].endswith("gemini-2.0-flash:generateContent")


def test_retries_exhausted_is_an_uncached_error(key, tmp_path):
    with lg.LocalGeminiServer(default=("http", 500)) as srv:
        g = labeler(srv, tmp_path, max_retries=2)
        rec = g.label(clip(), SR)
    assert rec["status"] == "error" and "500" in rec["error"] and len(srv.requests) == 3
    assert not list((tmp_path / "cache").glob("*.json"))


def test_bad_json_and_schema_violation_and_refusal_are_recorded(key, tmp_path):
    bad_schema = json.dumps({**GOOD, "overall_confidence": 7})
    with lg.LocalGeminiServer([("json", "{not json"), ("json", bad_schema), ("refuse", "SAFETY"), ("ok", GOOD)]) as srv:
        g = labeler(srv, tmp_path, max_concurrency=1)
        recs = g.label_many([(clip(f), SR) for f in (100, 200, 300, 400)])
    assert [r["status"] for r in recs] == ["malformed", "malformed", "refused", "ok"]
    assert recs[0]["text"] == "{not json" and "SAFETY" in recs[2]["reason"]
    assert lg.gemini_candidates(recs[0]) == [] and len(lg.gemini_candidates(recs[3])) == 3
    assert len(list((tmp_path / "cache").glob("*.json"))) == 4  # paid answers are cached, bad ones too


def test_concurrency_limit(key, tmp_path):
    with lg.LocalGeminiServer(delay_s=0.15) as srv:
        recs = labeler(srv, tmp_path, max_concurrency=2).label_many([(clip(100 + 10 * i), SR) for i in range(6)])
    assert all(r["status"] == "ok" for r in recs) and srv.max_inflight == 2


def test_no_key_is_a_clear_skip(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(lg.GeminiUnavailable, match="GEMINI_API_KEY is not set"):
        lg.GeminiLabeler()
    import inspect
    assert "key" not in inspect.signature(lg.GeminiLabeler).parameters  # the key is never a parameter


def test_key_never_appears_in_outputs_logs_or_cache(key, tmp_path, capfd, caplog):
    with lg.LocalGeminiServer([("http", 429), ("ok", GOOD), ("json", "oops"), ("http", 400)]) as srv:
        g = labeler(srv, tmp_path, max_retries=1)
        recs = [g.label(clip(f), SR) for f in (100, 200, 300)]
    assert [r["status"] for r in recs] == ["ok", "malformed", "error"]
    out, err = capfd.readouterr()
    err += caplog.text
    blob = json.dumps(recs) + out + err + repr(g) + "".join(p.read_text() for p in (tmp_path / "cache").glob("*"))
    assert "HTTP 429" in err           # the retry was logged ...
    assert SECRET not in blob          # ... but never the key
    assert hdr(srv.requests[0], "x-goog-api-key") == SECRET  # it was sent (as a header, not in the URL)
    assert all(SECRET not in r["path"] for r in srv.requests)


def test_cache_key_depends_on_model_prompt_audio():
    a, b = lg.wav_bytes(clip(220), SR), lg.wav_bytes(clip(221), SR)
    keys = {lg.cache_key("m", "p", a), lg.cache_key("m2", "p", a), lg.cache_key("m", "p2", a), lg.cache_key("m", "p", b)}
    assert len(keys) == 4 and lg.cache_key("m", "p", a) == lg.cache_key("m", "p", a)


def test_prompt_file_is_the_papers_with_citation():
    from musicsae.core import data_dir
    text = (data_dir() / lg.PROMPT_FILE).read_text()
    assert "Appendix H" in text and "Singh" in text
    p = lg.load_prompt()
    assert p.startswith("Listen very carefully to this set of audio clips") and "Include NO FILLER text." in p
    assert set(lg.ConceptLabels.model_fields) == {"concepts", "overall_summary", "overall_name", "overall_confidence"}


def test_concat_clips_is_a_seeded_permutation():
    cl = [np.full(10, i, np.float32) for i in range(1, 4)]
    x = lg.concat_clips(cl, sr=10, gap_s=0.2, seed=0)
    assert x.size == 30 + 2 * 2 and sorted(set(x[x > 0].tolist())) == [1, 2, 3]
    np.testing.assert_array_equal(x, lg.concat_clips(cl, sr=10, gap_s=0.2, seed=0))


RUN_NB = r'''
import json, sys
from pathlib import Path
import os
from execnb.shell import CaptureShell
from nbdev.process import NBProcessor
fn = Path(sys.argv[1]).resolve()
nb = NBProcessor(fn, process=True).nb
skip = {"slow", "gpu", "internet", "notest"}
def no_eval(cell):
    return cell.cell_type != "code" or bool(skip & set((getattr(cell, "directives_", {}) or {}).keys()))
k = CaptureShell(fn)
os.chdir(fn.parent); k.run_all(nb, exc_stop=True, preproc=no_eval)
Path(sys.argv[2]).write_text(json.dumps([c.get("outputs", []) for c in nb.cells], default=str))
'''


def test_key_never_appears_in_the_executed_notebook(tmp_path):
    "Run nbs/06b_gemini.ipynb (test cells) with a key in the environment; its outputs must not contain the key."
    import subprocess, sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "outputs.json"
    env = {**os.environ, "GEMINI_API_KEY": SECRET, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", RUN_NB, str(root / "nbs" / "06b_gemini.ipynb"), str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "gemini-test:generateContent" in text      # the notebook really ran and printed
    assert SECRET not in text and SECRET not in r.stdout + r.stderr


def _papermill(nb, out, env, *params):
    import subprocess, sys
    cmd = [sys.executable, "-m", "papermill", "--cwd", str(nb.parent), str(nb), str(out), "--no-progress-bar", *params]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_papermill_with_a_key_makes_no_api_call_unless_asked(tmp_path):
    """No surprise bills: executing 06b under papermill (which, unlike nbdev_test, runs its `#| internet` cell) with a
    key in the environment sends nothing to the API endpoint; only `-p call_api True` does (the control)."""
    from pathlib import Path
    nb = Path(__file__).resolve().parents[1] / "nbs" / "06b_gemini.ipynb"
    with lg.LocalGeminiServer() as counter:   # stands in for the real endpoint: every client of the run is pointed here
        env = {**os.environ, "GEMINI_API_KEY": SECRET, "MPLBACKEND": "Agg", lg.BASE_URL_ENV: counter.url,
               "GOOGLE_GEMINI_BASE_URL": counter.url}
        r = _papermill(nb, tmp_path / "default.ipynb", env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert counter.requests == []                                   # the defect: one request per execution
        assert "call_api is False" in (tmp_path / "default.ipynb").read_text()
        r = _papermill(nb, tmp_path / "asked.ipynb", env, "-p", "call_api", "True")
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(counter.requests) == 1 and counter.requests[0]["path"].endswith(f"/models/{lg.DEFAULT_MODEL}:generateContent")
    assert SECRET not in (tmp_path / "default.ipynb").read_text() + (tmp_path / "asked.ipynb").read_text()


def test_base_url_from_the_environment(key, monkeypatch, tmp_path):
    "With no base_url, GeminiLabeler uses $MUSICSAE_GEMINI_BASE_URL (how a run points 06 at a stand-in)."
    with lg.LocalGeminiServer([("ok", GOOD)]) as srv:
        monkeypatch.setenv(lg.BASE_URL_ENV, srv.url)
        g = lg.GeminiLabeler("gemini-1.5-flash", cache_dir=tmp_path / "c")
        rec = g.label(clip(), SR)
    assert g.base_url == srv.url and rec["status"] == "ok" and len(srv.requests) == 1


def test_audio_reply_names_the_concept_from_the_requests_audio(key, tmp_path):
    "The audio-derived stand-in: loudness, brightness and register follow the clip, and the answer fits the schema."
    t = np.arange(SR) / SR
    quiet_low = (0.01 * np.sin(2 * np.pi * 110 * t)).astype(np.float32)       # -43 dBFS, centroid ~110 Hz
    loud_high = (0.5 * np.sin(2 * np.pi * 880 * t)).astype(np.float32)        # -9 dBFS
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, SR).astype(np.float32)  # flat spectrum: centroid ~SR/4
    log = tmp_path / "requests.jsonl"
    with lg.LocalGeminiServer(default=lg.audio_reply, log_path=log) as srv:
        recs = labeler(srv, tmp_path).label_many([(x, SR) for x in (quiet_low, loud_high, noise)])
    assert [r["status"] for r in recs] == ["ok"] * 3
    for r, x in zip(recs, (quiet_low, loud_high, noise)):
        lg.ConceptLabels.model_validate(r["labels"])
        assert r["labels"] == lg.audio_concepts(lg.wav_bytes(x, SR))
    names = [[c["name"] for c in r["labels"]["concepts"]] for r in recs]
    assert names[0] == ["quiet dynamics", "dark timbre", "low register"]
    assert names[1][0] == "loud dynamics" and names[1][2] == "high register"
    assert names[2][1] == "bright timbre"
    assert "A2" in recs[0]["labels"]["overall_name"] and "A5" in recs[1]["labels"]["overall_name"]
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    import hashlib
    assert sorted(l["audio_sha256"] for l in lines) == sorted(hashlib.sha256(lg.wav_bytes(x, SR)).hexdigest() for x in (quiet_low, loud_high, noise))
    assert SECRET not in log.read_text()
    # silence and a request without audio
    assert lg.audio_concepts(lg.wav_bytes(np.zeros(SR, np.float32), SR))["overall_name"] == "Silence"
    assert lg.audio_reply({"contents": [{"parts": [{"text": "hi"}]}]}) == ("http", 400)
