"""What crosses the program's edge: files, checkpoints, the Hub, user inputs.

``fileio`` (atomic writes, guarded reads), ``checkpoint`` (safetensors and
Hugging Face names),
``hub`` (the Hugging Face Hub, optional), ``inputs`` (token-id checks at the
public entry points) and ``pretrained/`` (the shipped ``npgpt-small``).

Nothing is imported here: each module is loaded when first imported. Companion of
``docs/index.md`` (the package map); each module names its own chapter.
"""
