"""Packaging: the conda recipe agrees with requirements.txt, and the sdist and wheel install and work.

The slow test builds the sdist and, from it, the wheel (``python -m build
--no-isolation``: no download), installs each with ``--no-deps`` into a new
venv without pip, and runs a smoke test there. The new venv sees this
environment's dependencies through a ``.pth`` line naming its site-packages;
a plain path line does not run that folder's own ``.pth`` files, so the
editable install of the work tree stays invisible and the import must come
from the installed distribution.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import jinja2
import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[4]
# pip's name -> conda's name, where they differ
CONDA_NAMES = {"torch": "pytorch", "build": "python-build", "MNN": "mnn"}
# Not part of a source tree to build from.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "_build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
    "*.pth", "*.pth.tar", "*.partial", "demo-output",
)


def requirement_lines(name):
    lines = (line.split("#", 1)[0].strip() for line in (REPO / name).read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def conda_spec(requirement: Requirement) -> str:
    name = CONDA_NAMES.get(requirement.name, requirement.name)
    specifiers = ",".join(sorted(str(spec) for spec in requirement.specifier))
    return f"{name} {specifiers}".strip()


def normalised(spec: str) -> str:
    name, _, versions = spec.partition(" ")
    return f"{name} {','.join(sorted(versions.replace(' ', '').split(',')))}".strip()


@pytest.fixture(scope="module")
def recipe():
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    template = environment.from_string((REPO / "conda" / "meta.yaml").read_text())
    return yaml.safe_load(template.render(environ={"RECIPE_DIR": str(REPO / "conda")}, PYTHON="python"))


def setup_version() -> str:
    return re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)


def test_conda_recipe_run_requirements_are_requirements_txt(recipe):
    run = [normalised(spec) for spec in recipe["requirements"]["run"] if not spec.startswith("python ")]
    expected = [normalised(conda_spec(requirement)) for requirement in requirement_lines("requirements.txt")]
    assert run == expected


def test_conda_recipe_constrains_the_fast_and_mnn_extras(recipe):
    constrained = [normalised(spec) for spec in recipe["requirements"]["run_constrained"]]
    extras = requirement_lines("fast-requirements.txt") + requirement_lines("mnn-requirements.txt")
    assert constrained == [normalised(conda_spec(r)) for r in extras]


def test_conda_recipe_test_requirements_and_metadata(recipe):
    requires = [normalised(spec) for spec in recipe["test"]["requires"]]
    assert requires == [normalised(conda_spec(r)) for r in requirement_lines("test-requirements.txt")]
    assert recipe["package"] == {"name": "bob.learn.pytorch", "version": setup_version()}
    assert recipe["build"]["noarch"] == "python"
    assert "bob.learn.pytorch.preprocessor.audio" in recipe["test"]["imports"]
    assert "bob pytorch --help" in recipe["test"]["commands"]
    assert recipe["about"]["license"] == "BSD-3-Clause"


def test_buildout_develops_this_package():
    text = (REPO / "buildout.cfg").read_text()
    assert re.search(r"^develop = \.$", text, re.M)
    assert re.search(r"^eggs = bob\.learn\.pytorch$", text, re.M)
    assert re.search(r"^extensions = bob\.buildout$", text, re.M)


# -- sdist and wheel in a fresh venv ---------------------------------------------------------------

SMOKE_TEST = textwrap.dedent(
    """
    import sys
    from importlib.metadata import distribution, entry_points
    from importlib.util import find_spec
    from pathlib import Path

    prefix = Path(sys.prefix).resolve()
    import bob.learn.pytorch
    from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

    package = Path(bob.learn.pytorch.__file__).resolve().parent
    assert prefix in package.parents, f"imported from {package}, not from the new venv {prefix}"
    dist = distribution("bob.learn.pytorch")
    assert prefix in Path(dist.locate_file("")).resolve().parents or Path(dist.locate_file("")).resolve() == prefix

    groups = {"bob.cli": ["pytorch"], "bob.bio.pipeline": [], "bob.bio.config": [], "bob.bio.preprocessor": []}
    ours = [entry for entry in dist.entry_points]
    assert not [e for e in ours if e.group in ("console_scripts", "gui_scripts")], "ships a script"
    for group in groups:
        names = sorted(e.name for e in ours if e.group == group)
        assert names, f"no entry point in {group}"
        for entry in (e for e in ours if e.group == group):
            module = entry.value.split(":")[0]
            spec = find_spec(module)
            assert spec is not None and prefix in Path(spec.origin).resolve().parents, (group, entry.value)
    assert [e.name for e in entry_points(group="bob.cli") if e.value.startswith("bob.learn.pytorch")] == ["pytorch"]
    assert sorted(e.name for e in ours if e.group == "bob.bio.pipeline") == ["dltresnet34-voxceleb", "dltresnet34-voxceleb-vad", "resnet34-voxceleb"]

    speech = package / "data" / "speech"
    assert len(list(speech.glob("*.wav"))) == 17 and (speech / "speakers.csv").is_file()
    assert (package / "preprocessor" / "audio" / "data").is_dir()
    assert not list(package.rglob("*.pth.tar"))

    from click.testing import CliRunner
    from bob.cli import bob_main_cli
    result = CliRunner().invoke(bob_main_cli, ["pytorch", "--help"])
    assert result.exit_code == 0 and "extract-audio" in result.output, result.output

    import scipy.io.wavfile
    embedding = DltResNetExtractor(test=True)(scipy.io.wavfile.read(speech / "flite_kal_u1.wav"))
    assert embedding.shape == (1, 128), embedding.shape
    print("smoke test passed")
    """
)


def make_venv(folder: Path) -> Path:
    """A venv without pip that also sees this environment's packages (but not its .pth files)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(site, "_reuse_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, artefact: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", "--no-build-isolation", str(artefact)],
        check=True, timeout=600,
    )


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """``python -m build`` of a copy of the work tree: the sdist, then the wheel built from it."""
    pytest.importorskip("build")
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_COPIED)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"), str(source)],
        check=True, capture_output=True, text=True, timeout=900,
    )
    (sdist,) = (work / "dist").glob("*.tar.gz")
    (wheel,) = (work / "dist").glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.mark.slow
def test_sdist_carries_docs_requirements_recipes_and_test_data(artefacts):
    with tarfile.open(artefacts["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for required in (
        "README.rst", "requirements.txt", "fast-requirements.txt", "mnn-requirements.txt", "test-requirements.txt",
        "MANIFEST.in", "setup.py", "Makefile",
        "buildout.cfg", "conda/meta.yaml", ".ci/run", "doc/conf.py", "doc/index.rst",
        "bob/learn/pytorch/data/speech/speakers.csv", "bob/learn/pytorch/data/speech/NOTICE.txt",
        "bob/learn/pytorch/data/speech/flite_kal_u1.wav", "bob/learn/pytorch/test/test_cli.py",
        "bob/learn/pytorch/preprocessor/audio/data/.gitignore",
        "bob/learn/pytorch/test/data/README.md", "bob/learn/pytorch/test/data/checkpoint_spec.json",
        "bob/learn/pytorch/test/data/bn_drn34.npz", "bob/learn/pytorch/test/data/extract_T300.npz",
    ):
        assert required in names, f"{required} missing from the sdist"
    assert not [name for name in names if name.endswith((".pth.tar", ".pth", ".partial", ".pyc"))]
    assert not [name for name in names if name.startswith("doc/_build")]


@pytest.mark.slow
def test_wheel_holds_the_package_data_and_no_bob_script(artefacts):
    with zipfile.ZipFile(artefacts["wheel"]) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        declared = archive.read(entry_points).decode()
    assert "bob/learn/pytorch/data/speech/speakers.csv" in names
    assert len([name for name in names if name.startswith("bob/learn/pytorch/data/speech/") and name.endswith(".wav")]) == 17
    assert "bob/learn/pytorch/script/pytorch.py" in names
    assert "[console_scripts]" not in declared and "pytorch = bob.learn.pytorch.script.pytorch:pytorch" in declared
    assert not [name for name in names if name.endswith((".pth.tar", ".pth"))]
    assert not [name for name in names if name.startswith("bob/learn/pytorch/test/data/")], "golden data in the wheel"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installs_in_a_fresh_venv_and_passes_the_smoke_test(artefacts, kind, tmp_path):
    python = make_venv(tmp_path / "venv")
    pip_install(python, artefacts[kind])
    assert not (tmp_path / "venv" / "bin" / "bob").exists()
    finished = subprocess.run(
        [str(python), "-c", SMOKE_TEST], cwd=tmp_path, env=dict(os.environ, PYTHONNOUSERSITE="1"),
        capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stdout.strip().endswith("smoke test passed")
