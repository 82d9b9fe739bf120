"""Tiny models the tests share, built with the library's own builders (`musicsae.models.tiny_hf_musicgen`,
`musicsae.demo.model.tiny_demo_model`): one definition of each, random weights, built once per session.
Tests must not change them (hooks are removed on exit; generation does not touch the weights)."""
import pytest


@pytest.fixture(scope="session")
def tiny_hf():
    "transformers' MusicGen at toy size: 4 blocks, d_model 32, 4 codebooks of 64 at 50 Hz, 32 kHz, with a word-level tokenizer."
    import transformers
    from musicsae.models import tiny_hf_musicgen
    transformers.logging.set_verbosity_error()
    return tiny_hf_musicgen(seed=0)


@pytest.fixture(scope="session")
def steer_hf():
    """The steering tests' MusicGen: 3 blocks, 32 codes, LM heads × 30 (peaked next-code distributions, so a
    change of the hidden state shows in the sampled codes)."""
    import transformers
    from musicsae.models import tiny_hf_musicgen
    transformers.logging.set_verbosity_error()
    return tiny_hf_musicgen(seed=0, n_layers=3, vocab_size=32, head_scale=30.0, name="tiny")


@pytest.fixture(scope="session")
def tiny_demo():
    "The demo architecture at toy size: mel-RVQ codec with random codebooks of 32, a 3-block MusicgenForCausalLM, d_model 32."
    from musicsae.demo.model import tiny_demo_model
    return tiny_demo_model(seed=0)

