"""Chunk planning and standardisation (embedding module); the golden tests hold the numbers to the original's."""
import numpy
import pytest

from bob.learn.pytorch.embedding import iter_batches, standardize, standardized_batch


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("n_frames", [37, 298, 1001])
def test_standardize_is_bit_identical_to_the_plain_numpy_expression(dtype, n_frames):
    rng = numpy.random.default_rng(n_frames)
    chunk = (numpy.abs(rng.standard_normal((n_frames, 257))) * rng.uniform(0.1, 1000, 257)).astype(dtype)
    before = chunk.copy()
    plain = (chunk - chunk.mean(axis=0)) / (chunk.std(axis=0) + 1e-7)
    result = standardize(chunk)
    assert result.dtype == dtype
    numpy.testing.assert_array_equal(result, plain)
    numpy.testing.assert_array_equal(chunk, before)
    other = chunk[::-1] * 2
    batch = standardized_batch([chunk, other])
    assert batch.shape == (2, 1, n_frames, 257) and batch.dtype == numpy.float32
    numpy.testing.assert_array_equal(batch[0, 0], plain.astype(numpy.float32))
    other_plain = (other - other.mean(axis=0)) / (other.std(axis=0) + 1e-7)
    numpy.testing.assert_array_equal(batch[1, 0], other_plain.astype(numpy.float32))


def test_chunks_shorter_than_the_networks_minimum_are_dropped():
    specs = numpy.ones((340, 257))
    batches = list(iter_batches(specs, 100, batch_size=2, min_length=30, min_frames=37))
    assert [[len(chunk) for chunk in batch] for batch in batches] == [[100, 100], [100], [40]]  # the tail runs alone
    batches = list(iter_batches(specs, 100, batch_size=2, min_length=30, min_frames=50))
    assert [[len(chunk) for chunk in batch] for batch in batches] == [[100, 100], [100]]
    with pytest.raises(ValueError, match="no chunk of the 340-frame spectrogram has the 400 frames the network needs"):
        list(iter_batches(specs, 100, batch_size=2, min_length=30, min_frames=400))
