"""Speaker-embedding configurations for bob.

``dltresnet34`` and ``resnet34`` each define, in the legacy ``verify.py``
style, ``preprocessor``, ``extractor``, ``extracted_directory`` and
``skip_extraction``; and, for ``bob bio pipeline simple``, ``transformer``
and ``pipeline``. They are registered as the resources
``dltresnet34-voxceleb`` and ``resnet34-voxceleb``.
"""
