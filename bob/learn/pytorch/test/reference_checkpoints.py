"""Random-weight reference checkpoints in the layout of the original model files.

The golden data in ``data/`` were computed by the original code on these
checkpoints. Every tensor is determined by the network's name and its key,
so the files can be rebuilt anywhere, bit for bit in their tensors:

- the parameter names, shapes and dtypes, in the original's order, come from
  ``data/checkpoint_spec.json``, with a *role* per tensor;
- BatchNorm tensors (role ``bn_*``) are read from ``data/bn_<network>.npz``;
- convolution and linear tensors are uniform in ``(-a, a)``, float64 values
  cast to float32, each drawn from its own PCG64 stream seeded by the first 8
  bytes (little-endian) of ``sha256("<seed>:<key>")``; ``a = sqrt(6 / fan_in)``
  for weights, ``1 / sqrt(fan_in)`` for biases, where a bias takes the fan-in
  of the weight of its layer.

A file holds ``{"epoch": 30, "arch": ..., "state_dict": ..., "best_prec1": 87.5}``
with every key prefixed by ``module.`` (the original saved through
``DataParallel``); the DltResNet file is written in torch's legacy pickle
format, as in 2019. The variants hold the same tensors: ``numpy_scalar``
stores ``best_prec1`` as ``numpy.float64``, ``no_prefix`` drops ``module.``,
``bare`` is the state dict alone.

Usage::

    python -m bob.learn.pytorch.test.reference_checkpoints drn34 drn34.pth.tar
    python -m bob.learn.pytorch.test.reference_checkpoints rn34 rn34.pth.tar --variant numpy_scalar

Both print the :func:`tensor_digest` of the file they wrote.
"""
import argparse
import os
import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy
import torch

#: Folder of the specification data and the golden files.
DATA = Path(__file__).resolve().parent / "data"
#: Seed of each reference network's random tensors.
SEEDS: Dict[str, int] = {"drn34": 2024, "rn34": 2025}
#: Ways of saving the same tensors.
VARIANTS: Tuple[str, ...] = ("original", "numpy_scalar", "no_prefix", "bare")
#: Digest of the tensors of each reference network (see :func:`tensor_digest`).
DIGESTS: Dict[str, str] = {
    "drn34": "cf5390dff4fc1cdfa7c8203fd84636bad13f40d3ea8da9ace192c79ba09d7682",
    "rn34": "8eeeba3a231a3c1a8c44571fc420406d9bbacee45b7f1f8f762936b320ea1e59",
}
PREFIX = "module."

# (key, shape, role) of each tensor, in the order the original saved them
TensorSpec = Tuple[str, List[int], str]


def network_spec(network: str) -> dict:
    """The entry of ``network`` in ``checkpoint_spec.json`` (``arch``, ``legacy_pickle_format``, ``keys``)."""
    networks = json.loads((DATA / "checkpoint_spec.json").read_text())["networks"]
    if network not in networks:
        raise ValueError(f"unknown reference network {network!r}; choose one of {sorted(networks)}")
    return networks[network]


def _tensor_specs(spec: Mapping) -> List[TensorSpec]:
    return [(key, list(shape), role) for key, shape, _dtype, role in spec["keys"]]


def _fan_ins(specs: Sequence[TensorSpec]) -> Dict[str, int]:
    """Fan-in of each layer, keyed by the layer's name (the key without ``.weight``)."""
    return {
        key[: -len(".weight")]: int(numpy.prod(shape[1:]))
        for key, shape, role in specs
        if role.endswith("_weight") and not role.startswith("bn_")
    }


def _stream(seed: int, key: str) -> numpy.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return numpy.random.Generator(numpy.random.PCG64(int.from_bytes(digest[:8], "little")))


def _uniform_tensor(seed: int, key: str, shape: Sequence[int], bound: float) -> torch.Tensor:
    size = int(numpy.prod(shape))
    values = 2.0 * _stream(seed, key).random(size, dtype=numpy.float64) - 1.0
    return torch.from_numpy((bound * values).astype(numpy.float32).reshape(shape))


def _random_tensors(specs: Sequence[TensorSpec], seed: int) -> Iterator[Tuple[str, torch.Tensor]]:
    fan_ins = _fan_ins(specs)
    for key, shape, role in specs:
        if role.startswith("bn_"):
            continue
        layer, _, kind = key.rpartition(".")
        fan_in = fan_ins[layer]
        bound = (6.0 / fan_in) ** 0.5 if kind == "weight" else fan_in**-0.5
        yield key, _uniform_tensor(seed, key, shape, bound)


def reference_state_dict(network: str, seed: Optional[int] = None) -> "OrderedDict[str, torch.Tensor]":
    """The ``module.``-prefixed state dict of reference network ``network`` (``drn34`` or ``rn34``)."""
    spec = network_spec(network)
    specs = _tensor_specs(spec)
    random = dict(_random_tensors(specs, SEEDS[network] if seed is None else seed))
    with numpy.load(DATA / f"bn_{network}.npz") as batch_norm:
        return OrderedDict(
            (key, random[key] if key in random else torch.from_numpy(numpy.array(batch_norm[key])).reshape(shape))
            for key, shape, _role in specs
        )


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over each key's name and its tensor's bytes, in order; equal for equal tensors in any file format."""
    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(key.encode("utf-8"))
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _payload(network: str, state: "OrderedDict[str, torch.Tensor]", variant: str):
    if variant == "bare":
        return state
    if variant == "no_prefix":
        state = OrderedDict((key[len(PREFIX) :], tensor) for key, tensor in state.items())
    best = numpy.float64(87.5) if variant == "numpy_scalar" else 87.5
    return {"epoch": 30, "arch": network_spec(network)["arch"], "state_dict": state, "best_prec1": best}


def write_reference_checkpoint(
    network: str, path: Union[str, "os.PathLike[str]"], variant: str = "original"
) -> str:
    """Write reference checkpoint ``variant`` of ``network`` to ``path``; return its :func:`tensor_digest`.

    The legacy pickle format numbers storages differently from run to run: the
    DltResNet file's bytes vary between runs while its tensors do not.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    state = reference_state_dict(network)
    payload = _payload(network, state, variant)
    legacy = network_spec(network)["legacy_pickle_format"]
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return tensor_digest(state)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Write a random-weight reference checkpoint.")
    parser.add_argument("network", choices=sorted(SEEDS))
    parser.add_argument("output", help="file to write, for example drn34.pth.tar")
    parser.add_argument("--variant", choices=VARIANTS, default="original")
    arguments = parser.parse_args(argv)
    print(write_reference_checkpoint(arguments.network, arguments.output, arguments.variant), arguments.output)


if __name__ == "__main__":
    main()
