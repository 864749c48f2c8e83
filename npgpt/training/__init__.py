"""Pretraining: everything between a prepared corpus and a trained checkpoint.

Companion of ``docs/training.md`` (with ``docs/performance.md`` for the
threads and ``docs/distributed.md`` for many processes). The loop is
``npgpt.training.train``; one step is ``engine``; the rest is its equipment:
``optim`` (AdamW, schedule, clipping), ``data`` (token files to batches),
``rundir`` (checkpoints, exact resume), ``mixed_precision``, ``parallel``
(threads), ``distributed`` (processes), ``interrupt``, ``settings``,
``flops``, ``progress`` and ``plot``.

Nothing is imported here: ``import npgpt.training.optim`` loads the optimizer
alone, not the trainer.
"""
