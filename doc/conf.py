"""Sphinx configuration of the bob.learn.pytorch documentation.

Build with ``make docs`` (HTML, then the doctests of every page and of the
docstrings pulled in by autodoc; warnings are errors).
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # document the work tree even without an installation

project = "bob.learn.pytorch"
author = "bob.learn.pytorch developers"
copyright = "Idiap Research Institute and bob.learn.pytorch developers"
with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as _setup:
    release = re.search(r'version="([^"]+)"', _setup.read()).group(1)
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "numpydoc",
]

# numpydoc: no autosummary tables of members (autodoc lists them), no cross-reference guessing.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc sections carry the types
autodoc_default_options = {"show-inheritance": False}

# No network while building: no intersphinx. Link text for the rest.
nitpicky = False
suppress_warnings = ["ref.python"]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
master_doc = "index"
templates_path = []
html_static_path = []

try:
    import sphinx_rtd_theme  # noqa: F401

    html_theme = "sphinx_rtd_theme"
except ImportError:  # pragma: no cover - the doc extra installs it
    html_theme = "alabaster"
html_title = f"{project} {release}"

# Doctests run with the user settings and runtime cache of a throw-away home, never the real ones; the
# home is removed and the environment restored after each group.
doctest_global_setup = """
import os as _os, tempfile as _tempfile
_doc_home = _tempfile.mkdtemp(prefix="bob-learn-pytorch-doctest-")
_doc_saved = {name: _os.environ.get(name) for name in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "BOBRC", "BOB_LEARN_PYTORCH_RUNTIME_CACHE")}
_os.environ.pop("BOB_LEARN_PYTORCH_RUNTIME_CACHE", None)
_os.environ["HOME"] = _doc_home
_os.environ["XDG_CONFIG_HOME"] = _os.path.join(_doc_home, ".config")
_os.environ["XDG_CACHE_HOME"] = _os.path.join(_doc_home, ".cache")
_os.environ["BOBRC"] = _os.path.join(_doc_home, ".bobrc")
"""
doctest_global_cleanup = """
import shutil as _shutil
for _name, _value in _doc_saved.items():
    if _value is None:
        _os.environ.pop(_name, None)
    else:
        _os.environ[_name] = _value
_shutil.rmtree(_doc_home, ignore_errors=True)
"""
# Only the ``.. doctest::`` blocks of the pages run here: the ``>>>`` examples of the
# docstrings that autodoc pulls in need their module's names, so pytest runs them
# (``--doctest-modules``) instead.
doctest_test_doctest_blocks = ""
doctest_default_flags = (
    __import__("doctest").ELLIPSIS | __import__("doctest").NORMALIZE_WHITESPACE
)
