"""Legacy bob extractors for the audio embeddings."""
from .DummyExtractor import DummyExtractor

__all__ = ["DummyExtractor"]
