"""The concept world's workbench side: training the embedded model, judging its samples
against their prompts, and the erasure tasks every steering benchmark measures.

The world itself, its analyser and the shipped model's components are runtime
(:mod:`safety_lora.concept_world`): the demo and the ``concept_world`` classifier use them.
"""
