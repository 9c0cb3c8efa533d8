"""The offline workbench: what we run to make and measure steering, never what a deployment runs.

ESD training (:mod:`.training`), closed-form attack hardening (:mod:`.hardening`), the
red-team harness (:mod:`.attack`), ``compare`` (:mod:`.compare`) and the concept world's
training and task library (:mod:`.concept_world`). It needs the ``workbench`` extra
(``pip install 'safety-lora[workbench]'``). The runtime never imports it; it obtains every
steering target from the runtime's :class:`~safety_lora.steering.Steering`, so what it
measures is what a policy ships.
"""
