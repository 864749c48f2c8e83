"""Programs built on the library: the ``npgpt`` command line (``npgpt.apps.cli``).

Nothing is imported here: ``python -m npgpt`` and the ``npgpt`` console script
load ``npgpt.apps.cli`` themselves. Companion of ``docs/index.md`` (the package map).
"""
