"""core: files readable as the umask allows, the run layout, provenance stamps, recorded skips."""
import os
import stat

import pytest
import torch

from musicsae import core


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_are_readable_by_the_group(tmp_path, umask022):
    # mkstemp makes 0600 files: collaborators in a group could not read results.json, cards or SAE weights
    j = core.write_json_atomic(tmp_path / "r.json", {"a": 1})
    t = core.torch_save_atomic(tmp_path / "w.pt", {"w": torch.zeros(2)})
    for p in (j, t): assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p


def test_a_stricter_umask_is_kept(tmp_path):
    old = os.umask(0o077)
    try: p = core.write_json_atomic(tmp_path / "r.json", {})
    finally: os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_skip_then_run_then_replace(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICSAE_ROOT", str(tmp_path)); (tmp_path / "runs").mkdir()
    core.skip_stage("r", "probe", "one layer only")
    assert core.read_results("r")["probe"] == {"skipped": "one layer only"}
    assert core.update_results("r", "probe", {"acc": 0.4, "n": 3})["probe"] == {"acc": 0.4, "n": 3}
    assert core.update_results("r", "probe", {"acc": 0.5}, replace=True)["probe"] == {"acc": 0.5}
    assert core.RunLayout("r").results == tmp_path / "runs" / "r" / "results.json"


def test_stamps_ignore_times_and_key_order(tmp_path):
    st = tmp_path / "s.json"
    core.write_stamp(st, {"layer": 6, "manifest": "abc", "params": {"k": 32, "ef": 4}})
    assert core.fresh(st, {"params": {"ef": 4, "k": 32}, "manifest": "abc", "layer": 6})
    assert not core.fresh(st, {"params": {"ef": 4, "k": 100}, "manifest": "abc", "layer": 6})
    assert not core.fresh(tmp_path / "none.json", {})
    d = tmp_path / "music"; (d / "sub").mkdir(parents=True); (d / "sub" / "a.wav").write_bytes(b"1" * 100)
    fp = core.tree_fingerprint(d)
    os.utime(d / "sub" / "a.wav", (1, 1)); assert core.tree_fingerprint(d) == fp
    (d / "sub" / "a.wav").rename(d / "sub" / "b.wav"); assert core.tree_fingerprint(d) != fp
