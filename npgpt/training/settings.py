"""Settings dataclasses: one field per setting, its help text beside it, errors that name it.

Companion of ``docs/training.md`` (section "From the command line").

``TrainConfig``, ``SFTConfig`` and ``FinetuneConfig`` are dataclasses whose
fields are built with :func:`setting`, which stores the field's ``--help``
text in its metadata. ``npgpt.apps.cli`` generates one flag per field from
them (``max_steps`` -> ``--max-steps``), so a setting cannot exist without its
flag, and the help cannot drift from the code. A bad value raises
:class:`ConfigError`, which knows the field it is about, so the command line
can name the flag the user typed instead of the Python field.

The three inherit :class:`OptimizerSettings`, the settings of the step every
loop shares (AdamW, the warmup + cosine schedule, clipping, precision), so
each means the same in every command: ``warmup_steps`` counts optimizer steps
everywhere (nanoGPT's ``warmup_iters``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Optional

if TYPE_CHECKING:
    from npgpt.training.optim import AdamW

__all__ = ["setting", "retune", "ConfigError", "fail", "require_positive_ints", "require_non_negative",
           "check_adamw_and_dtype", "Settings", "OptimizerSettings"]


def setting(default: Any, help: str) -> Any:
    """A dataclass field with default ``default`` and ``--help`` text ``help``."""
    return dataclasses.field(default=default, metadata={"help": help})


def retune(base: type, name: str, default: Any, help: Optional[str] = None) -> Any:
    """The field ``name`` of the settings class ``base`` with another default (and its help, unless given).

    For a command whose good default differs (fine-tuning wants a smaller ``lr`` than pretraining):
    ``lr: float = retune(OptimizerSettings, "lr", 1e-4)``. The field keeps its place and meaning.
    """
    return setting(default, help if help is not None else base.__dataclass_fields__[name].metadata["help"])


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


class Settings:
    """What every settings dataclass can do: turn into a dict and back (how run directories save them).

    ``KIND`` names the settings in errors ("unknown training settings"); ``RETIRED`` maps a name
    that is no longer a setting to what replaced it, so old code and old files get that answer
    instead of a plain "unknown".
    """

    KIND: ClassVar[str] = "the"
    RETIRED: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # (self is a dataclass)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """The settings in ``values``; an unknown name is an error listing the known ones."""
        cls.refuse_retired(values)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def refuse_retired(cls, values: Any) -> None:
        """A :class:`ConfigError` for the first name in ``values`` that ``RETIRED`` lists."""
        for name in values:
            if name in cls.RETIRED:
                fail(cls.__name__, name, f"{{name}} is no longer a setting: {cls.RETIRED[name]}")


# Why a fraction-of-the-steps warmup (the old FinetuneConfig.warmup, `npgpt finetune --warmup`) is refused.
WARMUP_IN_STEPS = ("warmup counts optimizer steps now, in every command: use --warmup-steps N (warmup_steps=N "
                   "in Python); a fraction f of a run of S steps is f * S steps, and the default, "
                   "min(100, S // 10), is a tenth of any run up to 1,000 steps")


@dataclasses.dataclass
class OptimizerSettings(Settings):
    """The optimizer step's settings, the same in every training loop: AdamW (docs/training.md
    eq:adam-first-moment to eq:adam-update), the warmup + cosine schedule (eq:lr-schedule), gradient clipping
    (eq:grad-clip) and the precision.

    ``warmup_steps`` counts optimizer steps; ``None`` means "fit the run", ``min(100, S // 10)``
    steps of a run of ``S``. ``min_lr`` ``None`` means ``lr / 10``. A command whose good defaults
    differ changes them with :func:`retune`.
    """

    FLAGS_TITLE: ClassVar[str] = "optimizer and precision"
    # fine-tuning's old fraction of the steps: refused by name, in code and in settings files alike
    RETIRED: ClassVar[dict[str, str]] = {"warmup": WARMUP_IN_STEPS}

    lr: float = setting(1e-3, "peak learning rate")
    min_lr: Optional[float] = setting(None, "learning rate at the end of the cosine decay (default: lr / 10)")
    warmup_steps: Optional[int] = setting(None, "optimizer steps of linear warmup (default: min(100, S // 10) for a run "
                                                     "of S steps)")
    weight_decay: float = setting(0.1, "AdamW weight decay on the linear layers' matrices")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    eps: float = setting(1e-8, "AdamW epsilon")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: off)")
    dtype: str = setting("float32", "float32, or float16 for mixed precision: float16 matrix products, float32 "
                                    "weights and loss, dynamic loss scaling (for GPUs; NumPy's float16 is slow)")

    def __post_init__(self) -> None:
        self.check_optimizer()

    def check_optimizer(self) -> None:
        """Refuse bad values with a ``ConfigError`` naming the setting; ``min_lr`` ``None`` becomes ``lr / 10``."""
        from npgpt.training.mixed_precision import DTYPES  # here: the settings alone load no array code

        owner = type(self).__name__
        if not self.lr > 0:
            fail(owner, "lr", f"{{name}} must be positive, got {self.lr}")
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if not 0 <= self.min_lr <= self.lr:
            fail(owner, "min_lr", f"{{name}} must lie in 0..lr ({self.lr}), got {self.min_lr}")
        if self.warmup_steps is not None:
            if isinstance(self.warmup_steps, float) and not self.warmup_steps.is_integer():
                fail(owner, "warmup_steps", f"{{name}} counts optimizer steps, got {self.warmup_steps}")
            require_non_negative(owner, self, ("warmup_steps",))
            self.warmup_steps = int(self.warmup_steps)
        require_non_negative(owner, self, ("weight_decay", "grad_clip"))
        check_adamw_and_dtype(owner, self, DTYPES)

    def warmup_for(self, max_steps: int, steps_name: str = "max_steps") -> int:
        """The warmup of a run of ``max_steps`` optimizer steps: ``warmup_steps``, by default min(100, S // 10).

        More warmup than steps is a ``ConfigError``; ``steps_name`` says what the run's length is called.
        """
        warmup = min(100, max_steps // 10) if self.warmup_steps is None else self.warmup_steps
        if warmup > max_steps:
            fail(type(self).__name__, "warmup_steps", f"{{name}} must lie in 0..{steps_name} ({max_steps}), "
                                                      f"got {warmup}")
        return warmup

    def learning_rate(self, step: int, max_steps: int) -> float:
        """The learning rate at optimizer step ``step`` (0-based) of a ``max_steps`` run (eq:lr-schedule)."""
        from npgpt.training.optim import cosine_schedule

        return cosine_schedule(step, max_steps, self.lr, self.warmup_for(max_steps), float(self.min_lr))  # type: ignore[arg-type]

    def adamw(self, groups: list[dict[str, Any]]) -> AdamW:
        """AdamW over the parameter ``groups`` (``npgpt.training.optim.param_groups``) with these settings."""
        from npgpt.training.optim import AdamW

        return AdamW(groups, lr=self.lr, betas=(self.beta1, self.beta2), eps=self.eps, weight_decay=self.weight_decay)
