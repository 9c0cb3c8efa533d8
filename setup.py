"""Packages are found, not listed: every package under ``safety_lora/``, plus the two folders
``pyproject.toml`` maps into it (``classifiers/``, ``policies/``), so a wheel holds them all."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["safety_lora", "safety_lora.*"]),
        "safety_lora.classifiers",
        "safety_lora.policies",
    ]
)
