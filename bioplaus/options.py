"""Options declared once: the typed, ranged, documented settings of a learner or circuit.

Every learner and circuit declares its options in a nested ``Options`` class beside the class that
takes them — a pydantic model whose fields carry the name, type, default, allowed range or choices
and a one-line meaning::

    class MonoForward(Learner):
        class Options(LearnerOptions):
            lr: float = option(2e-3, "learning rate", gt=0)
            schedule: Literal["simultaneous", "greedy"] = option("simultaneous", "layer schedule")

        def __init__(self, circuit, task, **options):
            super().__init__(circuit, task, **options)
            lr = self.options.lr

The declaration is the single source of truth: validation at compose time (before anything is
written), the config defaults, ``bioplaus list NAME`` and every exit-2 message come from it.
pydantic is used (rather than hand-written checks) because its strict mode gives exact type checks
(``True`` is not an integer, ``"1"`` is not a number, an integer is a number) and declarative
ranges with machine-readable errors that we turn into one readable message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bioplaus.errors import UsageError

__all__ = ["CircuitOptions", "LearnerOptions", "Options", "option"]


def option(default: Any, meaning: str, **constraints: Any) -> Any:
    """A declared option: its default, a one-line meaning and pydantic constraints
    (``gt``, ``ge``, ``lt``, ``le``, ``min_length``, …)."""
    if isinstance(default, (list, dict, set)):
        return Field(default_factory=lambda d=default: type(d)(d), description=meaning, **constraints)
    return Field(default, description=meaning, **constraints)


def _type_text(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is not None and str(origin) == "typing.Literal":
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple):
        if not args or args[0] is Any:
            return "a list"
        item, constraint = args[0], ""
        if get_origin(item) is Annotated:
            item, *metadata = get_args(item)
            constraint = _range_text(metadata)
        inner = _type_text(item).removeprefix("a ").removeprefix("an ")
        return f"a list of {inner}s" + (f", each {constraint}" if constraint else "")
    if origin is not None and type(None) in args:  # Optional[X]
        rest = [a for a in args if a is not type(None)]
        return "null or " + " or ".join(_type_text(a) for a in rest)
    if origin is not None and args and str(origin) in ("typing.Union", "<class 'types.UnionType'>"):
        return " or ".join(_type_text(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, Options):
        return "a mapping with the options " + ", ".join(annotation.model_fields)
    if annotation is list:
        return "a list"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _range_text(metadata: list[Any]) -> str:
    parts = []
    for m in metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(m, attr, None)
            if value is not None:
                parts.append(f"{sign} {value:g}" if isinstance(value, (int, float)) else f"{sign} {value}")
        if getattr(m, "multiple_of", None) is not None:
            parts.append(f"a multiple of {m.multiple_of}")
        if getattr(m, "min_length", None) is not None:
            parts.append(f"with at least {m.min_length} entries")
        if getattr(m, "max_length", None) is not None:
            parts.append(f"with at most {m.max_length} entries")
    return " and ".join(parts)


class Options(BaseModel):
    """Base of every declaration: strict types, no unknown keys, immutable once built."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    #: the config section this declaration fills (``learner`` or ``circuit``)
    section: ClassVar[str] = "option"

    @classmethod
    def fields(cls) -> dict[str, Any]:
        return dict(cls.model_fields)

    @classmethod
    def allowed(cls, name: str) -> str:
        """What option ``name`` accepts, in words (``a number > 0``, ``one of a, b``)."""
        f = cls.model_fields[name]
        text = _type_text(f.annotation)
        rng = _range_text(list(f.metadata))
        return f"{text} {rng}".strip()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Option name -> default value (plain Python values, as YAML holds them)."""
        out = {}
        for name, f in cls.fields().items():
            value = f.get_default(call_default_factory=True)
            if isinstance(value, Options):
                value = value.model_dump()
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """One row per option: (name, allowed, default, meaning) — for ``bioplaus list`` and docs;
        a nested declaration gives one row per inner option (``dst.every``)."""
        defaults = cls.defaults()
        rows = []
        for name, f in cls.fields().items():
            inner = f.annotation
            if isinstance(inner, type) and issubclass(inner, Options):  # nested: one row per option
                rows += [(f"{name}.{n}", allowed, default, meaning)
                         for n, allowed, default, meaning in inner.describe()]
            else:
                rows.append((name, cls.allowed(name), defaults[name], f.description or ""))
        return rows

    @classmethod
    def parse(cls, owner: str, values: Mapping[str, Any]) -> Options:
        """Validate ``values`` (a config section without ``name``) into this declaration.

        ``owner`` names what is configured, e.g. ``learner 'mono_forward'``. Raises `UsageError`
        naming the key, the value given and what is allowed.
        """
        values = {k: _plain(v) for k, v in values.items() if k != "name"}
        section = cls.section
        try:
            return cls(**values)
        except ValidationError as e:
            raise UsageError(cls._message(owner, section, values, e)) from None

    @classmethod
    def check_value(cls, path: list[str], value: Any) -> None:
        """Check one value for the option at ``path`` (``["lr"]``, ``["dst", "every"]``) against
        its field alone — type, range, choices; cross-option rules need the whole section (`parse`).
        Raises `UsageError` in `parse`'s words; an unknown option is left to `parse`."""
        from pydantic import TypeAdapter

        model: type[Options] = cls
        for part in path[:-1]:
            inner = model.model_fields[part].annotation if part in model.model_fields else None
            if not (isinstance(inner, type) and issubclass(inner, Options)):
                return
            model = inner
        field = model.model_fields.get(path[-1])
        if field is None:
            return
        try:
            TypeAdapter(Annotated[field.annotation, field], config=ConfigDict(strict=True)).validate_python(
                _plain(value))
        except ValidationError:
            raise UsageError(f"{cls.section}.{'.'.join(path)} must be {model.allowed(path[-1])}; "
                             f"got {_plain(value)!r}.") from None

    @classmethod
    def _message(cls, owner: str, section: str, values: Mapping[str, Any], error: ValidationError) -> str:
        lines = []
        for err in error.errors():
            loc = [str(part) for part in err["loc"] if not isinstance(part, int)]
            if not loc:  # a cross-option rule (a model validator): its own sentence
                lines.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            model, path = cls._field_owner(loc)
            if err["type"] == "extra_forbidden":
                where = owner if len(loc) == 1 else f"{section}.{'.'.join(loc[:-1])}"
                model = cls._nested(loc[:-1])
                valid = ", ".join(model.fields()) or "(none)"
                lines.append(f"{where} has no option '{loc[-1]}'. Its options: {valid}.")
                continue
            given = _lookup(values, path, err.get("input"))
            lines.append(f"{section}.{'.'.join(path)} must be {model.allowed(path[-1])}; got {given!r}.")
        return " ".join(dict.fromkeys(lines))

    @classmethod
    def _nested(cls, path: list[str]) -> type[Options]:
        model: type[Options] = cls
        for part in path:
            inner = model.model_fields[part].annotation if part in model.model_fields else None
            if not (isinstance(inner, type) and issubclass(inner, Options)):
                return model
            model = inner
        return model

    @classmethod
    def _field_owner(cls, loc: list[str]) -> tuple[type[Options], list[str]]:
        """(declaration, path of option names) that an error location points to: ``["dst",
        "every"]`` for a nested declaration; ``["threshold"]`` for ``["threshold", "float"]``
        (the union member pydantic tried)."""
        model: type[Options] = cls
        path: list[str] = []
        for part in loc:
            if part not in model.model_fields:
                break
            path.append(part)
            inner = model.model_fields[part].annotation
            if not (isinstance(inner, type) and issubclass(inner, Options)):
                break
            model = inner
        if not path or path[-1] not in model.model_fields:
            return cls, path or [loc[0]]
        return model, path


def _lookup(values: Mapping[str, Any], loc: list[str], default: Any) -> Any:
    node: Any = values
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


class LearnerOptions(Options):
    """Base of a learner's declaration (config section ``learner``)."""

    section: ClassVar[str] = "learner"


class CircuitOptions(Options):
    """Base of a circuit's declaration (config section ``circuit``)."""

    section: ClassVar[str] = "circuit"


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python lists and dicts; tuples -> lists."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        return list(value)
    return value
