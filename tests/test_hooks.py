"Hooks: capture equals the backend's own hidden states, steering vectors, output replacement, CFG halves, cleanup."
import pytest
import torch
import torch.nn as nn
import transformers
from fastcore.test import test_fail as fails

from musicsae.models import MusicModel, SteeringHook, add_vector, capture, cfg_rows, replace_output, delay_inputs
from musicsae.audiocraft_backend import audiocraft_available

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def hf(tiny_hf): return tiny_hf


@pytest.fixture(scope="module")
def demo(tiny_demo): return tiny_demo


def codes(card, T=12, B=2, seed=0):
    return torch.randint(0, card, (B, 4, T), generator=torch.Generator().manual_seed(seed))


def n_hooks(model):
    "Forward hooks installed by musicsae on the model's blocks (transformers installs its own recorders)."
    return sum(getattr(f, "__module__", "") == "musicsae.models" for l in model.layers for f in l._forward_hooks.values())


def test_capture_equals_output_hidden_states_hf(hf):
    "Block i's output is decoder_hidden_states[i+1]; the last entry is after the final layer norm."
    c = codes(64); B = c.shape[0]
    ids = delay_inputs(hf.model.decoder, c); unc = hf.model.get_unconditional_inputs(B)
    with capture(hf, range(hf.n_layers)) as acts, torch.no_grad():
        hs = hf.model(decoder_input_ids=ids, encoder_outputs=unc.encoder_outputs, attention_mask=unc.attention_mask,
                      output_hidden_states=True).decoder_hidden_states
    assert len(hs) == hf.n_layers + 1 and all(len(acts[l]) == 1 for l in acts)
    for i in range(hf.n_layers - 1): torch.testing.assert_close(acts[i][0], hs[i + 1], rtol=1e-5, atol=1e-6)
    ln = hf.model.decoder.model.decoder.layer_norm
    torch.testing.assert_close(ln(acts[hf.n_layers - 1][0]), hs[-1], rtol=1e-5, atol=1e-6)
    # residuals() is the same tensor, positions 1..T
    r = hf.residuals(c, [1])[1]
    torch.testing.assert_close(r, hs[2][:, 1:c.shape[-1] + 1])
    assert n_hooks(hf) == 0


def test_capture_equals_output_hidden_states_demo(demo):
    c = codes(32)
    with capture(demo, [0, 1]) as acts, torch.no_grad():
        hs = demo.lm(input_ids=delay_inputs(demo.lm, c), output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts[0][0], hs[1]); torch.testing.assert_close(acts[1][0], hs[2])


@pytest.mark.parametrize("which", ["hf", "demo"])
def test_add_vector(which, hf, demo):
    m = {"hf": hf, "demo": demo}[which]; c = codes(m.cardinality)
    base = m.forward_codes(c)
    with add_vector(m, 1, torch.zeros(m.d_model)): same = m.forward_codes(c)
    assert torch.equal(base, same)
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))
    with add_vector(m, 1, v, scale=2.0): steered = m.forward_codes(c)
    assert not torch.allclose(base, steered, atol=1e-3)
    # the block output moves by exactly scale * v (capture registered after add_vector sees the steered output)
    r0 = m.residuals(c, [1])[1]
    with add_vector(m, 1, v, scale=2.0): r1 = m.residuals(c, [1])[1]
    torch.testing.assert_close(r1 - r0, (2.0 * v).expand_as(r0), rtol=1e-4, atol=1e-4)
    assert n_hooks(m) == 0 and torch.equal(m.forward_codes(c), base)
    fails(lambda: add_vector(m, 1, torch.zeros(3)).__enter__(), contains="d_model")


def test_replace_output(hf):
    c = codes(64); base = hf.forward_codes(c)
    with replace_output(hf, 2, lambda h: h): assert torch.equal(hf.forward_codes(c), base)
    with replace_output(hf, 2, torch.zeros_like): ablated = hf.forward_codes(c)
    assert not torch.allclose(ablated, base, atol=1e-3)
    with replace_output(hf, 2, lambda h: h[:, :1]):
        fails(lambda: hf.forward_codes(c), contains="replace_output")
    assert n_hooks(hf) == 0


def test_hooks_removed_after_exception(hf):
    for cm in (capture(hf, [0, 1]), add_vector(hf, 0, torch.ones(hf.d_model)), replace_output(hf, 3, torch.zeros_like)):
        with pytest.raises(KeyError):
            with cm:
                assert n_hooks(hf) > 0
                raise KeyError("boom")
        assert n_hooks(hf) == 0
    fails(lambda: capture(hf, [99]).__enter__(), contains="out of range")
    assert n_hooks(hf) == 0


class _TupleBlock(nn.Module):
    "A block returning (hidden, extra) like older transformers layers."
    def __init__(self, d): super().__init__(); self.lin = nn.Linear(d, d)
    def forward(self, x): return (self.lin(x), "cache")


class _TupleModel(MusicModel):
    def __init__(self, d=8):
        self.name, self.n_layers, self.d_model = "tuple", 2, d
        self.blocks = nn.Sequential(_TupleBlock(d), _TupleBlock(d)); self.layers = list(self.blocks)
    def run(self, x):
        for b in self.layers: x = b(x)[0]
        return x


def test_tuple_outputs():
    m = _TupleModel(); x = torch.randn(2, 5, 8)
    base = m.run(x)
    with capture(m, [0]) as acts: m.run(x)
    assert acts[0][0].shape == (2, 5, 8)
    with add_vector(m, 1, torch.ones(8), scale=0.5): out = m.run(x)
    torch.testing.assert_close(out, base + 0.5)
    with add_vector(m, 1, torch.zeros(8)): assert torch.equal(m.run(x), base)
    with replace_output(m, 1, torch.zeros_like): assert (m.run(x) == 0).all()


def test_cfg_halves_during_generate(hf):
    "With guidance the batch is doubled (conditional half first); cfg_halves steers one half only."
    v = torch.randn(hf.d_model, generator=torch.Generator().manual_seed(1))
    prompts = ["calm piano", "fast rock drums"]
    with capture(hf, [1]) as base: hf.generate(prompts, duration_s=0.06, seed=0, guidance_scale=3.0)
    assert base[1][0].shape[0] == 4 and base[1][1].shape[1] == 1     # doubled batch; KV cache: one position per step
    for half, rows in (("cond", slice(0, 2)), ("uncond", slice(2, 4))):
        with add_vector(hf, 1, v, cfg_halves=half, n_samples=2) as hook, capture(hf, [1]) as got:
            hf.generate(prompts, duration_s=0.06, seed=0, guidance_scale=3.0)
        d = got[1][0] - base[1][0]          # first step: identical inputs, so the difference is the vector
        other = slice(2, 4) if half == "cond" else slice(0, 2)
        torch.testing.assert_close(d[rows], v.expand_as(d[rows]), rtol=1e-4, atol=1e-4)
        assert d[other].abs().max() == 0
        assert isinstance(hook, SteeringHook) and hook.calls == len(got[1])
    with add_vector(hf, 1, v, cfg_halves="cond", n_samples=1):
        fails(lambda: hf.forward_codes(codes(64, B=3)), contains="batch 3")
    fails(lambda: add_vector(hf, 1, v, cfg_halves="cond").__enter__(), contains="n_samples")
    fails(lambda: add_vector(hf, 1, v, cfg_halves="left", n_samples=1).__enter__(), contains="cfg_halves")
    assert n_hooks(hf) == 0


def test_cfg_halves_without_guidance_steer_every_conditional_row(hf):
    """Defect: `add_vector`'s old rule split any even batch in halves, so without guidance (2 prompts, 2 rows, all
    conditional) 'cond' steered only the first row and 'uncond' the second. Without CFG every row is conditional."""
    v = torch.randn(hf.d_model, generator=torch.Generator().manual_seed(2))
    prompts = ["calm piano", "fast rock drums"]
    gen = lambda: hf.generate(prompts, duration_s=0.06, seed=0, guidance_scale=1.0)
    with capture(hf, [1]) as base: gen()
    assert base[1][0].shape[0] == 2                                  # guidance 1: no doubling
    with add_vector(hf, 1, v, cfg_halves="cond", n_samples=2), capture(hf, [1]) as got: gen()
    torch.testing.assert_close(got[1][0] - base[1][0], v.expand_as(base[1][0]), rtol=1e-4, atol=1e-4)
    with add_vector(hf, 1, v, cfg_halves="uncond", n_samples=2), capture(hf, [1]) as got: a = gen()
    assert torch.equal(got[1][0], base[1][0]) and torch.equal(a, gen())
    assert [cfg_rows(2, 2, h) for h in ("both", "cond", "uncond")] == [slice(None), slice(None), slice(0, 0)]
    assert [cfg_rows(4, 2, h) for h in ("both", "cond", "uncond")] == [slice(None), slice(0, 2), slice(2, None)]


def _first_step_rows(model, prompts):
    "The steered block's output at the first generation step, with guidance 3 (2n rows)."
    with capture(model, [1]) as got: model.generate(prompts, duration_s=0.1, seed=0, guidance_scale=3.0, top_k=16)
    return got[1][0]


def _check_stacked(h, n):
    "Rows [n, 2n) carry the null condition (identical for every prompt), rows [0, n) the prompts (different)."
    assert h.shape[0] == 2 * n
    assert all(torch.equal(h[n], h[n + i]) for i in range(n))
    assert not torch.allclose(h[0], h[1], atol=1e-6)


def test_cfg_layout_is_conditional_first_hf(hf):
    "transformers' MusicGen: the CFG batch is [conditional; unconditional], the rule the steering hook's halves assume."
    _check_stacked(_first_step_rows(hf, ["calm piano", "fast rock drums"]), 2)
    assert hf.cfg_stacked and hf.accepts_text


@pytest.mark.skipif(not audiocraft_available(), reason="audiocraft extra not installed")
def test_cfg_layout_is_conditional_first_audiocraft():
    "audiocraft's MusicGen stacks the same way; its optional two-step CFG (separate passes) allows only cfg_halves='both'."
    from musicsae.audiocraft_backend import tiny_audiocraft_musicgen
    ac = tiny_audiocraft_musicgen(seed=0)
    _check_stacked(_first_step_rows(ac, ["calm piano", "fast rock drums"]), 2)
    assert ac.cfg_stacked and ac.accepts_text
    ac.lm.two_step_cfg = True
    try:
        assert not ac.cfg_stacked
        fails(lambda: add_vector(ac, 1, torch.zeros(ac.d_model), cfg_halves="cond", n_samples=1).__enter__(), contains="separate passes")
        with add_vector(ac, 1, torch.zeros(ac.d_model)): pass
    finally: ac.lm.two_step_cfg = False
