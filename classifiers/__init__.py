"""Classifier plugins, installed as ``safety_lora.classifiers``: one module per ``kind``.

:mod:`~safety_lora.classifiers.base` holds the two protocols they implement and
:mod:`~safety_lora.classifiers.registry` the config classes policy files choose from.
"""
