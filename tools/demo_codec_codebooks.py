"""How much does the demo codec's quantiser bound its decoder? Fit `MelRVQCodec` with more codebooks and score the decode.

    python tools/demo_codec_codebooks.py [--codebooks 4 8 16] [--train 200] [--test 16] [--threads 1]

For each number of codebooks (cardinality 256): fit the residual quantiser on the mel frames of the first `--train`
train clips of the demo corpus (`demo_corpus(800, seed=0)`), fit the learned decoder (`fit_decoder`) on the same
clips, and print one JSON line: spectral convergence of the decoded test clips through the mel pseudo-inverse and
through the learned decoder (lower is better), and the quantised mel's mean squared error. Issue 14 asks for a
decoder "well below" the shipped 0.84; the language model is untouched by the decoder but not by the codebooks.
"""
import argparse, json, time

import numpy as np
import torch

from musicsae.data import load_clip
from musicsae.demo.corpus import demo_corpus
from musicsae.demo.model import MelRVQCodec, fit_decoder, spectral_convergence


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codebooks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    man = demo_corpus(n_clips=800, seed=0); root = man.attrs["root"]
    clips = lambda df: [torch.tensor(load_clip(r, root)) for r in df.to_dict("records")]
    tr, te = clips(man[man.split == "train"].head(a.train)), clips(man[man.split == "test"].head(a.test))
    feats = torch.cat([MelRVQCodec().features(x[None])[0] for x in tr])
    for K in a.codebooks:
        t = time.time()
        c = MelRVQCodec(n_codebooks=K).fit(feats, seed=0)
        sc = lambda: float(np.mean([spectral_convergence(x[None], c.decode(c.encode(x[None])), c) for x in te]))
        pinv = sc()
        fit_decoder(c, tr, codes=[c.encode(x[None])[0] for x in tr])
        mse = float(np.mean([((c.features(x[None]) - c.dequantize(c.encode(x[None]))) ** 2).mean() for x in te]))
        print(json.dumps(dict(codebooks=K, cardinality=c.cardinality, sc_pinv=round(pinv, 3), sc_learned=round(sc(), 3),
                              mel_mse=round(mse, 4), n_train=len(tr), n_test=len(te), seconds=round(time.time() - t))), flush=True)


if __name__ == "__main__":
    main()
