"""Command-line tools: the ``bob pytorch`` group of bob's ``bob`` command (see :mod:`.pytorch`)."""
