"""Recordings given as files (inputs module): one check of each path, WAV headers held to the file's length."""
import io
import os
import struct

import numpy
import pytest
import scipy.io.wavfile

from bob.learn.pytorch import inputs

from .conftest import SPEECH

GOOD = SPEECH / "flite_kal_u1.wav"
SAMPLES = numpy.random.RandomState(3).randint(-3000, 3000, 8001).astype(numpy.int16)


def wav_bytes(samples=SAMPLES, rate=16000) -> bytes:
    buffer = io.BytesIO()
    scipy.io.wavfile.write(buffer, rate, samples)
    return buffer.getvalue()


def with_riff_size(content: bytes, size: int) -> bytes:
    return content[:4] + struct.pack("<I", size) + content[8:]


def data_offset(content: bytes) -> int:
    return content.index(b"data")


def with_data_size(content: bytes, size: int) -> bytes:
    at = data_offset(content) + 4
    return content[:at] + struct.pack("<I", size) + content[at + 4 :]


def chunk(name: bytes, payload: bytes) -> bytes:
    return name + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def damaged_wav_headers() -> dict:
    """WAV files whose headers scipy's parser fails on with errors other than ValueError."""
    good = GOOD.read_bytes()
    return {
        "riff_only": (b"RIFF", "error"),  # struct.error
        "cut_in_fmt": (good[:30], "error"),
        "zero_channels": (good[:22] + b"\0\0" + good[24:], "ZeroDivisionError"),
        "no_fmt_chunk": (b"RIFF" + (16).to_bytes(4, "little") + b"WAVELIST" + (4).to_bytes(4, "little") + b"INFO",
                         "UnboundLocalError"),
    }


@pytest.mark.parametrize("name", sorted(damaged_wav_headers()))
def test_read_wav_turns_any_damaged_header_into_one_value_error(tmp_path, name):
    content, error_type = damaged_wav_headers()[name]
    path = tmp_path / f"{name}.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^not a readable WAV file \(damaged header: {error_type}: "):
        inputs.read_wav(path)


# -- headers against lengths ----------------------------------------------------------------------


def contradictions() -> dict:
    """WAV files whose header contradicts their length, and what the message says (scipy reads each silently)."""
    good = wav_bytes()
    data_size = len(SAMPLES) * 2
    after_data = len(good) - data_offset(good) - 8
    return {
        "truncated copy": (good[:-1000], f"its header declares {data_size} bytes of samples but the file holds {after_data - 1000} after it"),
        "data size too small": (with_data_size(good, data_size - 2000), "2000 bytes after its last chunk are not a WAV chunk"),
        "riff size too large": (with_riff_size(good, len(good)), f"its header gives a length of {len(good) + 8} bytes but the file has {len(good)}"),
        "riff size too small": (with_riff_size(good, 36), f"its header gives a length of 44 bytes but the file has {len(good)}"),
        "sizes of a stream writer": (with_data_size(with_riff_size(good, 0xFFFFFFFF), 0xFFFFFFFF), f"its header declares 4294967295 bytes of samples but the file holds {after_data} after it"),
        "bytes appended": (good + b"trailing", "8 bytes after its last chunk are not a WAV chunk"),
    }


@pytest.mark.parametrize("case", sorted(contradictions()))
def test_a_header_contradicting_the_length_is_refused_naming_both_numbers(tmp_path, case):
    content, words = contradictions()[case]
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    assert words in inputs.wav_length_problem(path)
    with pytest.raises(ValueError) as error:
        inputs.read_wav(path)
    assert str(error.value).startswith("WAV header contradicts the file's length: " + words)
    assert str(error.value).endswith("(a truncated or damaged file); repair or re-export it, e.g. 'sox in.wav out.wav'")


def test_scipy_alone_returns_the_samples_present_of_a_truncated_copy(tmp_path):
    """Why the check exists: the reader only warns (a warning lost in a batch) and returns a shorter recording."""
    content, _ = contradictions()["truncated copy"]
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    with pytest.warns(scipy.io.wavfile.WavFileWarning, match="Reached EOF prematurely"):
        rate, samples = scipy.io.wavfile.read(path)
    assert len(samples) == len(SAMPLES) - 500


def test_chunks_after_the_samples_and_pad_bytes_are_fine(tmp_path):
    good = wav_bytes()
    listed = good + chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00sox\x00\x00")  # odd payload, padded
    odd = good + chunk(b"note", b"abc")
    unpadded = odd[:-1]  # a missing pad byte after an odd-sized last chunk is tolerated
    for content in (good, listed, odd, unpadded):
        path = tmp_path / "x.wav"
        path.write_bytes(with_riff_size(content, len(content) - 8 + (content is unpadded)))
        assert inputs.wav_length_problem(path) == ""
        rate, samples = inputs.read_wav(path)
        numpy.testing.assert_array_equal(samples, SAMPLES)


def test_every_bundled_recording_has_a_consistent_header():
    assert [path.name for path in sorted(SPEECH.glob("*.wav")) if inputs.wav_length_problem(path)] == []


# -- one check of a path --------------------------------------------------------------------------


def test_names_and_paths_beyond_the_system_limits_are_too_long_not_missing(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    long_name = tmp_path / ("x" * (name_max + 1) + ".wav")
    assert inputs.file_problem(long_name) == f"file name too long (a name of {name_max + 5} bytes; the system allows {name_max})"
    with pytest.raises(FileNotFoundError, match=r"^file name too long \(a name of"):
        inputs.read_wav(long_name)
    path_max = os.pathconf("/", "PC_PATH_MAX")
    deep = os.path.join(str(tmp_path), *["d" * 200] * (path_max // 200 + 1), "x.wav")
    assert inputs.file_problem(deep) == f"file name too long (a path of {len(deep)} bytes; the system allows {path_max})"
    assert inputs.file_problem(tmp_path / "missing.wav") == "no such file"


def test_a_too_long_list_file_is_named_as_such(tmp_path):
    listing = tmp_path / ("l" * 300 + ".txt")
    items, problems = inputs.collect_inputs([str(listing)])
    assert items == [] and problems == [inputs.Failure(str(listing), "list file: file name too long (a name of 304 bytes; the system allows 255)")]
