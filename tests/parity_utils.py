"""Loading the reference fixtures (tests/data/parity, see its README) in our layout."""
import json
import os

import numpy as np

PARITY_DIR = os.path.join(os.path.dirname(__file__), "data", "parity")


def load(name):
    """Returns the opened npz fixture `name` (without extension)."""
    return np.load(os.path.join(PARITY_DIR, name + ".npz"))


def read_json(f, key):
    return json.loads(str(f[key]))


def state_dict(f):
    """The reference PyTorch state dict stored in a model fixture."""
    return {k: f[k] for k in read_json(f, "meta_json")["param_keys"]}


def nhwc(x):
    """NCHW (fixture layout) to NHWC (ours)."""
    return np.asarray(x).transpose(0, 2, 3, 1)


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def levels(f, prefix):
    """[f[prefix/0], f[prefix/1], ...] for as many levels as are stored."""
    out = []
    while f"{prefix}/{len(out)}" in f.files:
        out.append(f[f"{prefix}/{len(out)}"])
    return out

