"""Recordings and reference computations shared by the pipeline, runtime and streaming tests."""
import numpy
import scipy.io.wavfile

from bob.learn.pytorch import pretrained
from bob.learn.pytorch.embedding import embed_spectrogram
from bob.learn.pytorch.frontend import prepare_signal, spectrogram

from .conftest import SPEECH

#: Embedding tolerance (data/README.md, "Tolerances").
ATOL = 1e-5
MIN_FRAMES = pretrained.get("dltresnet34").min_frames
BINS = pretrained.get("dltresnet34").front_end.bins


def speech(name):
    """``(rate, samples)`` of a bundled recording."""
    return scipy.io.wavfile.read(SPEECH / f"{name}.wav")


def long_signal():
    """About 26 s of int16 speech (2573 frames): the bundled recordings end to end."""
    names = sorted(path.stem for path in SPEECH.glob("*.wav"))[:9]
    return numpy.concatenate([speech(name)[1] for name in names])


def whole_spectrogram(audio):
    return spectrogram(prepare_signal(audio), 16000)


def eager_embedding(network, specs, L=0, batch_size=1, min_length=30):
    """The plain computation: the eager network through the original's chunking."""
    return embed_spectrogram(network, specs, L, batch_size, min_length, min_frames=MIN_FRAMES, bins=BINS)
