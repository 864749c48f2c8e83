"""Settings dataclasses: one field per setting, its help text beside it, errors that name it.

Companion of ``docs/training.md`` (section "From the command line").

``TrainConfig`` and ``FinetuneConfig`` are dataclasses whose fields are built
with :func:`setting`, which stores the field's ``--help`` text in its
metadata. ``npgpt.apps.cli`` generates one flag per field from them
(``max_steps`` -> ``--max-steps``), so a setting cannot exist without its
flag, and the help cannot drift from the code. A bad value raises
:class:`ConfigError`, which knows the field it is about, so the command line
can name the flag the user typed instead of the Python field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NoReturn

__all__ = ["setting", "ConfigError", "fail", "require_positive_ints", "require_non_negative", "check_adamw_and_dtype"]


def setting(default: Any, help: str) -> Any:
    """A dataclass field with default ``default`` and ``--help`` text ``help``."""
    return dataclasses.field(default=default, metadata={"help": help})


class ConfigError(ValueError):
    """A bad setting. ``owner`` is the dataclass, ``field`` the setting.

    ``str(error)`` names the field as ``TrainConfig.warmup_steps``;
    ``error.message_for("--warmup-steps")`` names it as the user typed it.
    """

    def __init__(self, owner: str, field: str, template: str) -> None:
        self.owner, self.field, self.template = owner, field, template
        super().__init__(self.message_for(f"{owner}.{field}"))

    def message_for(self, name: str) -> str:
        return self.template.replace("{name}", name)


def fail(owner: str, field: str, template: str) -> NoReturn:
    """Raise :class:`ConfigError`; ``template`` says ``{name}`` where the setting's name goes."""
    raise ConfigError(owner, field, template)


def check_adamw_and_dtype(owner: str, config: Any, dtypes: tuple[str, ...]) -> None:
    """The settings every training loop shares: AdamW's betas in [0, 1) and eps > 0, a known ``dtype``."""
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(config, name) < 1:
            fail(owner, name, f"{{name}} must lie in [0, 1), got {getattr(config, name)}")
    if not config.eps > 0:
        fail(owner, "eps", f"{{name}} must be positive, got {config.eps}")
    if config.dtype not in dtypes:
        fail(owner, "dtype", f"{{name}} must be one of {', '.join(dtypes)}, got {config.dtype!r}"
                             + _why_not_dtype(config.dtype))


def _why_not_dtype(dtype: Any) -> str:
    """A word on why a common dtype is not offered, for the error that refuses it."""
    reasons = {"float64": "training runs in float32; float64 would double the memory and the time for no "
                          "better model",
               "bfloat16": "npgpt does not train in bfloat16 yet; docs/gpu.md says why", "half": "say float16",
               "float": "say float32", "fp16": "say float16", "fp32": "say float32"}
    reason = reasons.get(str(dtype).lower())
    return f" ({reason})" if reason else ""


def check_dropout(owner: str, config: Any, field: str = "dropout") -> None:
    """A dropout setting, checked by ``npgpt.functional.check_dropout`` and refused as a ConfigError naming it."""
    from npgpt.functional import check_dropout  # here: the settings alone load no array code

    try:
        check_dropout(getattr(config, field), "{name}")
    except ValueError as exc:
        fail(owner, field, str(exc))


def require_positive_ints(owner: str, config: Any, names: tuple[str, ...], allow_none: bool = False) -> None:
    """Each named setting is a whole number >= 1 (``None`` too with ``allow_none``); stored as an ``int``."""
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
            fail(owner, name, f"{{name}} must be a positive integer, got {value!r}")
        setattr(config, name, int(value))


def require_non_negative(owner: str, config: Any, names: tuple[str, ...]) -> None:
    """Each named setting is >= 0."""
    for name in names:
        if getattr(config, name) < 0:
            fail(owner, name, f"{{name}} must be >= 0, got {getattr(config, name)}")
