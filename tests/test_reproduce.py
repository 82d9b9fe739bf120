"""`make reproduce` (tools/reproduce.py) reruns a stage exactly when its inputs changed — never from file times."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _nb(path, params_src, body):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params_src); p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"display_name": "python3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)


@pytest.fixture
def repo(tmp_path):
    "A throwaway repository root with two stage notebooks that append their name to a log when they run."
    (tmp_path / "settings.ini").write_text("[DEFAULT]\n"); (tmp_path / "musicsae").mkdir(); (tmp_path / "nbs").mkdir()
    log = tmp_path / "ran.log"
    _nb(tmp_path / "nbs" / "a.ipynb", 'config = "test"\naudio_dir = ""', f'open({str(log)!r}, "a").write("a\\n")')
    # a comment with quotes: papermill's own inspector drops such a line (x would keep its default)
    _nb(tmp_path / "nbs" / "b.ipynb", 'config = "test"\nx = 1  # the \'x\' of "b"', f'open({str(log)!r}, "a").write(f"b{{x}}\\n")')
    (tmp_path / "music").mkdir(); (tmp_path / "music" / "song.wav").write_bytes(b"RIFF" + bytes(100))
    return tmp_path


def _run(repo, cfg: dict, *extra):
    (repo / "p.yaml").write_text(json.dumps(cfg))
    env = {**os.environ, "MUSICSAE_ROOT": str(repo)}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "reproduce.py"), str(repo / "p.yaml"), "--stages", "a", "b", *extra],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    ran = (repo / "ran.log").read_text().split() if (repo / "ran.log").exists() else []
    (repo / "ran.log").unlink(missing_ok=True)
    return ran


def test_reruns_from_stamps_not_file_times(repo):
    cfg = {"audio_dir": "music", "x": 1, "unused": 0}
    assert _run(repo, cfg) == ["a", "b1"]
    assert _run(repo, cfg) == []                                  # same inputs: both skipped
    os.utime(repo / "nbs" / "a.ipynb", (1, 1)); os.utime(repo / "music" / "song.wav")
    assert _run(repo, cfg) == []                                  # touched files, same bytes: still skipped
    assert _run(repo, {**cfg, "unused": 5}) == []                 # a key no stage declares changes nothing
    assert _run(repo, {**cfg, "x": 2}) == ["b2"]                  # only the stage that declares x reruns
    (repo / "music" / "song.wav").write_bytes(b"RIFF" + bytes(101))
    assert _run(repo, {**cfg, "x": 2}) == ["a", "b2"]             # the user's music changed: a reruns, and so does b after it
    assert _run(repo, {**cfg, "x": 2}, "--force") == ["a", "b2"]


def test_each_notebook_gets_only_its_parameters(repo):
    _run(repo, {"audio_dir": "music", "x": 3, "steer_alphas": [1.0]})
    nb = nbformat.read(repo / "runs" / "p" / "b.ipynb", as_version=4)
    injected = next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "x = 3" in injected and 'config = "p"' in injected and "steer_alphas" not in injected and "audio_dir" not in injected


DRAW = ('import matplotlib.pyplot as plt\nfrom pathlib import Path\n'
        'fig, ax = plt.subplots(); ax.plot([0, 1], [1, 0]); out = Path("../figures") / config; out.mkdir(parents=True, exist_ok=True)\n'
        'fig.savefig(out / "line.png")')


def test_executed_notebooks_show_their_figures_inline(tmp_path):
    # defect (issue 25): the Makefile exports MPLBACKEND=Agg for scripts, the papermill kernels inherited it, and the 11
    # executed notebooks of runs/demo held 0 image outputs although 05 and 08 draw 21 figures (only the PNG files existed)
    (tmp_path / "settings.ini").write_text("[DEFAULT]\n"); (tmp_path / "musicsae").mkdir(); (tmp_path / "nbs").mkdir()
    _nb(tmp_path / "nbs" / "fig.ipynb", 'config = "test"', DRAW)
    (tmp_path / "p.yaml").write_text("{}")
    env = {**os.environ, "MUSICSAE_ROOT": str(tmp_path), "MPLBACKEND": "Agg"}     # as `make reproduce` runs it
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "reproduce.py"), str(tmp_path / "p.yaml"), "--stages", "fig"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    nb = nbformat.read(tmp_path / "runs" / "p" / "fig.ipynb", as_version=4)
    draws = next(c for c in nb.cells if "plt.subplots" in c.source)
    pngs = [o for o in draws.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, draws.outputs                                   # shown where it is drawn
    assert (tmp_path / "figures" / "p" / "line.png").read_bytes()[:4] == b"\x89PNG"   # and saved for the report
