"""The bob.bio.base and bob.pipelines names this package uses, imported without changing Ctrl-C.

Importing ``bob.pipelines`` (and so ``bob.bio.base``) imports
``dask_jobqueue.runner``, which replaces the process's SIGINT handler with
one that calls ``sys.exit()``: Ctrl-C then ends a script silently, with exit
status 0, as if it had finished. The package's modules take these names from
here, where they are imported with the handler that was in place put back
afterwards, so that Ctrl-C keeps raising :class:`KeyboardInterrupt`.
Processes that import ``bob.pipelines`` themselves first (bob's own commands)
keep whatever handler that gave them.

``bob.pipelines`` also reads bob's settings file when imported; a damaged one
is reported first, as a :class:`~bob.learn.pytorch.errors.SettingsError`
naming the file, instead of the parser error it would raise there.
"""
import contextlib
import signal
import threading
from typing import Iterator

from .settings import check_bob_config_file

__all__ = [
    "sigint_handler_kept",
    "wrap",
    "Distance",
    "CSVDatabase",
    "FileSampleLoader",
    "Extractor",
    "PipelineSimple",
    "Preprocessor",
]


@contextlib.contextmanager
def sigint_handler_kept() -> Iterator[None]:
    """Put the SIGINT handler back as it was on entry, if the code inside replaced it.

    Does nothing outside the main thread, where handlers cannot be set, or when
    the handler on entry was not installed from Python (``getsignal`` gives None).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) is not handler:
            signal.signal(signal.SIGINT, handler)


check_bob_config_file()
with sigint_handler_kept():
    from bob.bio.base.algorithm import Distance
    from bob.bio.base.database import CSVDatabase, FileSampleLoader
    from bob.bio.base.extractor import Extractor
    from bob.bio.base.pipelines import PipelineSimple
    from bob.bio.base.preprocessor import Preprocessor
    from bob.pipelines import wrap
