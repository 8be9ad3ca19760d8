"""bob.learn.pytorch: PyTorch speaker-embedding extractors for the bob framework."""
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent


def read_requirements(name):
    """Requirement lines of ``name``, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in (HERE / name).read_text().splitlines())
    return [line for line in lines if line]


setup(
    name="bob.learn.pytorch",
    version="2.0.0",
    description="Speaker embeddings from PyTorch DltResNet/ResNet models, for the bob framework",
    long_description=(HERE / "README.rst").read_text(),
    long_description_content_type="text/x-rst",
    url="https://gitlab.idiap.ch/bob/bob.learn.pytorch",
    license="BSD-3-Clause",
    author="bob.learn.pytorch developers",
    python_requires=">=3.11",
    packages=find_namespace_packages(include=["bob", "bob.*"], exclude=["bob.learn.pytorch.test.data"]),
    include_package_data=True,
    # the golden data travel with the source distribution (to run the tests), not with the wheel
    exclude_package_data={"bob.learn.pytorch.test": ["data/*"]},
    package_data={
        "bob.learn.pytorch": ["data/speech/*.wav", "data/speech/*.csv", "data/speech/*.txt"],
        "bob.learn.pytorch.preprocessor.audio": ["data/.gitignore"],
    },
    zip_safe=False,
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "fast": read_requirements("fast-requirements.txt"),
        "mnn": read_requirements("fast-requirements.txt") + read_requirements("mnn-requirements.txt"),
        "vad": read_requirements("vad-requirements.txt"),
        "test": read_requirements("test-requirements.txt"),
        "doc": ["sphinx>=7", "sphinx-rtd-theme>=2", "numpydoc>=1.6"],
    },
    entry_points={
        "bob.cli": ["pytorch = bob.learn.pytorch.script.pytorch:pytorch"],
        "bob.bio.pipeline": [
            "dltresnet34-voxceleb = bob.learn.pytorch.config.audio.dltresnet34:pipeline",
            "resnet34-voxceleb = bob.learn.pytorch.config.audio.resnet34:pipeline",
            "dltresnet34-voxceleb-vad = bob.learn.pytorch.config.audio.dltresnet34_vad:pipeline",
        ],
        "bob.bio.config": [
            "dltresnet34-voxceleb = bob.learn.pytorch.config.audio.dltresnet34",
            "resnet34-voxceleb = bob.learn.pytorch.config.audio.resnet34",
            "dltresnet34-voxceleb-vad = bob.learn.pytorch.config.audio.dltresnet34_vad",
        ],
        "bob.bio.preprocessor": [
            "dltresnet34-voxceleb = bob.learn.pytorch.config.audio.dltresnet34:preprocessor",
            "resnet34-voxceleb = bob.learn.pytorch.config.audio.resnet34:preprocessor",
        ],
    },
    classifiers=[
        "Framework :: Bob",
        "Development Status :: 5 - Production/Stable",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: BSD License",
        "Natural Language :: English",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
    ],
)
