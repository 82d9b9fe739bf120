"""SAEs in the hub layout (musicsae.sae_hub): our folders, published grids, SAELens' and sparsify's folders and hub ids
load into a TopKSAE that encodes and decodes as the original does, to float tolerance."""
import json
import pytest
import torch

from musicsae.sae import TopKSAE, planted_dictionary
from musicsae.trainer import TrainConfig, TensorSource, train_sae
from musicsae import sae_hub
from musicsae.sae_hub import export_saelens, from_pretrained, load_saes

torch.set_num_threads(1)


def _seeded(d=16, n=64, k=6, layer=3, seed=0, scale=1.7):
    "A TopKSAE with every parameter random (biases and scale too), so no term can go missing unnoticed."
    sae = TopKSAE(d, n, k, layer=layer, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(n, d, generator=g) / d ** 0.5); sae.b_enc.copy_(0.1 * torch.randn(n, generator=g))
        sae.b_dec.copy_(torch.randn(d, generator=g)); sae.scale.fill_(scale)
    return sae


def _x(d=16, n=300, seed=5):
    return 2.0 * torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def assert_same_sae(a: TopKSAE, b: TopKSAE, x, tol=1e-5):
    "Same dense code and same reconstruction of x."
    torch.testing.assert_close(b.encode_dense(x), a.encode_dense(x), atol=tol, rtol=tol)
    torch.testing.assert_close(b(x), a(x), atol=tol, rtol=tol)


def test_musicsae_folder_roundtrip(tmp_path):
    sae, x = _seeded(), _x()
    sae.save(tmp_path / "L3_ef4_k6")
    back = from_pretrained(tmp_path / "L3_ef4_k6")
    assert_same_sae(sae, back, x, 0)
    assert (back.cfg.layer, back.k, float(back.scale), back.hub_meta["format"]) == (3, 6, pytest.approx(1.7), "musicsae")


def test_export_saelens_roundtrip(tmp_path):
    sae, x = _seeded(), _x()
    export_saelens(sae, tmp_path / "lens", model_name="demo")
    back = from_pretrained(tmp_path / "lens")
    assert back.hub_meta | {"folder": None} == dict(format="saelens", model="demo", hook_name="layers.3", layer=3, folder=None)
    assert_same_sae(sae, back, x, 1e-5)
    torch.testing.assert_close(back.W_dec, sae.W_dec, atol=1e-6, rtol=1e-6)   # the scale is unfolded again


@pytest.mark.parametrize("b_dec_in,rescale", [(True, False), (False, False), (True, True)])
def test_saelens_native_sae(tmp_path, b_dec_in, rescale):
    sae_lens = pytest.importorskip("sae_lens", reason="sae_lens is not installed (make bench-deps): SAELens round trip not checked")
    torch.manual_seed(0)
    cfg = sae_lens.TopKSAEConfig(d_in=16, d_sae=64, k=6, apply_b_dec_to_input=b_dec_in, rescale_acts_by_decoder_norm=rescale)
    cfg.metadata.hook_name = "blocks.4.hook_resid_post"; cfg.metadata.model_name = "tiny"
    lens = sae_lens.TopKSAE(cfg)
    with torch.no_grad():
        for p in lens.parameters(): p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 2 else 0.2))
    lens.save_model(tmp_path / "lens")
    ours, x = from_pretrained(tmp_path / "lens"), _x()
    assert ours.cfg.layer == 4 and ours.k == 6 and ours.hub_meta["model"] == "tiny"
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_dense(x), lens.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), lens(x), atol=1e-5, rtol=1e-5)
    # and the reverse: SAELens reads what we loaded, re-exported
    export_saelens(ours, tmp_path / "again")
    lens2 = sae_lens.SAE.load_from_disk(str(tmp_path / "again"), device="cpu")
    with torch.no_grad(): torch.testing.assert_close(lens2(x), lens(x), atol=1e-5, rtol=1e-5)


def _sparsify():
    try:
        import sparsify
        return sparsify
    except ImportError as e:
        pytest.skip(f"sparsify is not installed ({e}; `make bench-deps` installs eai-sparsify==1.3.3): sparsify round trip not checked")


def _sparsify_sae(sp, d=16, k=6, ef=4, seed=0):
    torch.manual_seed(seed)
    s = sp.SparseCoder(d, sp.SparseCoderConfig(expansion_factor=ef, k=k))
    with torch.no_grad():
        s.encoder.bias.normal_(0, 0.1); s.b_dec.normal_(0, 0.5)
    return s


def test_sparsify_native_sae(tmp_path):
    sp = _sparsify()
    s, x = _sparsify_sae(sp), _x()
    s.save_to_disk(tmp_path / "layers.7")
    ours = from_pretrained(tmp_path / "layers.7")
    assert (ours.cfg.layer, ours.k, ours.n_latents, ours.hub_meta["format"]) == (7, 6, 64, "sparsify")
    with torch.no_grad():
        acts, idx, _ = s.encode(x)
        ref = torch.zeros(len(x), 64).scatter_(1, idx, acts)
        torch.testing.assert_close(ours.encode_dense(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), s.decode(acts, idx), atol=1e-5, rtol=1e-5)


def test_sparsify_multi_hookpoint_folder(tmp_path):
    sp = _sparsify()
    for l in (2, 5): _sparsify_sae(sp, seed=l).save_to_disk(tmp_path / "run" / f"layers.{l}")
    saes = load_saes(tmp_path / "run")
    assert sorted(saes) == ["L2_ef4_k6", "L5_ef4_k6"]
    x = _x()
    ref = sp.SparseCoder.load_from_disk(tmp_path / "run" / "layers.5")
    with torch.no_grad(): torch.testing.assert_close(saes["L5_ef4_k6"](x), ref.decode(*ref.encode(x)[:2]), atol=1e-5, rtol=1e-5)


def test_sparsify_format_without_sparsify(tmp_path):
    "The sparsify layout written by hand (as sparsify's save_to_disk does): loads even where sparsify is not installed."
    from safetensors.torch import save_file
    sae, x = _seeded(scale=1.0), _x()
    f = tmp_path / "layers.3"; f.mkdir()
    save_file({"encoder.weight": sae.W_enc.detach(), "encoder.bias": sae.b_enc.detach(), "W_dec": sae.W_dec.detach(),
               "b_dec": sae.b_dec.detach()}, str(f / "sae.safetensors"))
    (f / "cfg.json").write_text(json.dumps(dict(activation="topk", expansion_factor=4, normalize_decoder=True, num_latents=0, k=6,
                                                multi_topk=False, skip_connection=False, transcode=False, d_in=16)))
    assert_same_sae(sae, from_pretrained(f), x, 1e-6)


def test_bad_folders_name_the_file(tmp_path):
    sae = _seeded()
    sae.save(tmp_path / "a")
    c = json.loads((tmp_path / "a" / "cfg.json").read_text()); c["n_latents"] = 65
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="sae.safetensors"): from_pretrained(tmp_path / "a")
    export_saelens(sae, tmp_path / "b")
    c = json.loads((tmp_path / "b" / "cfg.json").read_text()); c["d_sae"] = 99
    (tmp_path / "b" / "cfg.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match=r"b/cfg\.json.*d_sae=99"): from_pretrained(tmp_path / "b")
    (tmp_path / "c").mkdir(); (tmp_path / "c" / "weights.bin").write_text("")
    with pytest.raises(FileNotFoundError, match="no SAE"): load_saes(tmp_path / "c")
    (tmp_path / "c" / "cfg.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not an SAE folder.*weights\.bin"): from_pretrained(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="not a hub id"): from_pretrained(tmp_path / "missing")


def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    "The internet path, offline: the download is pointed at a local snapshot; the subfolder of the id is the SAE."
    sae, x = _seeded(), _x()
    sae.save(tmp_path / "snap" / "L3_ef4_k6")
    calls = []
    def fake(repo_id, subfolder=None):
        calls.append((repo_id, subfolder)); return tmp_path / "snap"
    monkeypatch.setattr(sae_hub, "_snapshot_download", fake)
    assert_same_sae(sae, from_pretrained("someone/music-saes/L3_ef4_k6"), x, 0)
    assert calls == [("someone/music-saes", "L3_ef4_k6")]
    assert sorted(load_saes("hf:someone/music-saes")) == ["L3_ef4_k6"]
    def offline(repo_id, subfolder=None): raise OSError("offline")
    monkeypatch.setattr(sae_hub, "_snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="hub download of 'someone/x' failed"): from_pretrained("someone/x")
