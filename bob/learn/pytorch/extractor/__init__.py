"""Legacy bob extractors (the feature-extraction step of ``verify.py`` configurations).

:class:`CallableExtractor` is bob.bio.base's own class when the installed
bob.bio.base still has it (up to 4.x), otherwise this package's equivalent.
"""
from .CallableExtractor import LegacyExtractor, identity

try:  # bob.bio.base <= 4
    from bob.bio.base.extractor import CallableExtractor
except ImportError:  # bob.bio.base >= 5 removed it
    from .CallableExtractor import CallableExtractor

__all__ = ["CallableExtractor", "LegacyExtractor", "identity"]
