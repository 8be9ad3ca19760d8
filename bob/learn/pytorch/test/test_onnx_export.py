"""The exporter's edges: one line for a network it cannot trace, exports from two threads at once."""
import logging
import threading

import pytest
import torch

from bob.learn.pytorch import export_cache, onnx_export, runtimes
from bob.learn.pytorch.errors import ExportError, RuntimeBuildError
from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor

from .helpers_audio import ATOL, eager_embedding, speech, whole_spectrogram

pytestmark = pytest.mark.skipif(not runtimes.onnxruntime_available(), reason='needs ".[fast]"')

TRACE_FAILURE = "torch.export cannot trace the network UntraceableResNet (GuardOnDataDependentSymNode: Could not guard on data-dependent expression"


@pytest.fixture
def cache_off(monkeypatch):
    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, "off")


def test_a_network_torch_export_cannot_trace_raises_one_line_and_logs_the_report_at_debug(untraceable, caplog):
    network = untraceable.build().eval()
    with caplog.at_level(logging.DEBUG, logger="bob.learn.pytorch.onnx_export"), pytest.raises(ExportError) as error:
        onnx_export.export_frame_body(network, 257)
    assert str(error.value).startswith(TRACE_FAILURE) and "\n" not in str(error.value)
    assert "\x1b[" not in str(error.value) and error.value.__cause__ is None
    reports = [record for record in caplog.records if record.name == "bob.learn.pytorch.onnx_export"]
    assert reports and all(record.levelno == logging.DEBUG for record in reports)
    assert "Failed to export the model with torch.export" in caplog.text  # the exporter's whole report, kept


def test_an_untraceable_network_runs_eagerly_under_auto_with_one_warning_and_is_refused_by_name(untraceable, rn_file, caplog):
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch"):  # whatever level a command left on it
        extractor = EmbeddingExtractor("untraceable", str(rn_file))
        assert extractor.runtime == "eager"
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"ONNX Runtime could not run the network (ExportError: {TRACE_FAILURE}")
    assert warnings[0].endswith("); using eager PyTorch")
    audio = speech("flite_kal_u1")
    assert extractor(audio).shape == (1, 128)
    with pytest.raises(RuntimeBuildError, match=r"^ONNX Runtime could not run the network \(ExportError: torch.export cannot trace the network UntraceableResNet .*\); use backend 'auto' or 'eager'$"):
        EmbeddingExtractor("untraceable", str(rn_file), backend="onnxruntime").network


def test_two_threads_building_runtimes_at_once_both_get_onnxruntime(drn_file, rn_file, cache_off):
    """Two exports at once failed inside the exporter, and ``auto`` silently ran eager: exports now take turns."""
    extractors = [EmbeddingExtractor("dltresnet34", str(drn_file)), EmbeddingExtractor("resnet34", str(rn_file), trust_checkpoint=True)]
    start = threading.Barrier(2)
    names, errors = {}, []

    def build(index, extractor):
        try:
            start.wait()
            names[index] = extractor.runtime
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build, args=pair) for pair in enumerate(extractors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and names == {0: "onnxruntime", 1: "onnxruntime"}
    audio = speech("flite_awb_u2")
    for extractor in extractors:
        expected = eager_embedding(extractor.network, whole_spectrogram(audio))
        torch.testing.assert_close(torch.from_numpy(extractor(audio)), torch.from_numpy(expected), rtol=0, atol=ATOL)


def test_export_settings_name_how_the_frame_body_is_exported():
    assert onnx_export.export_settings() == {
        "options": {"dynamo": True, "opset_version": 18, "verify": False, "report": False, "verbose": False},
        "example": [2, 300],
        "names": ["spectrogram", "frames"],
        "free": ["batch", "time", "frequency"],
        "optimizer": "onnxscript.optimizer.optimize",
    }
