"""Click options built from the one option table (localllm.options.FIELDS): a flag's type, range,
help and error message come from there, so `run`, `chat`, `plan` and `serve` cannot drift apart,
and a sampling option added to the table reaches `run` with no change here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import click

from ..options import FIELDS, SAMPLING_FIELDS, Field, SamplingOptions


class TableValue(click.ParamType):
    """A number checked by its table entry: the library's rule and message, on the command line."""

    def __init__(self, field: Field):
        self.field = field
        self.name = "integer" if field.kind is int else "float"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # a default
        try:
            number = self.field.kind(value.strip())
        except ValueError:
            self.fail(f"{value!r} is not {'a whole number' if self.field.kind is int else 'a number'}", param, ctx)
        if (problem := self.field.problem(number, value)) is not None:
            self.fail(problem, param, ctx)
        return number


def option(name: str, help: str | None = None, shown_default: str | None = None, choices: tuple[str, ...] = (),
           **more) -> Callable:
    """The click option for table field `name`: its flag, type and range from the table; `help`
    replaces the table's sentence where a command means something narrower by it, `shown_default`
    says what leaving it out does there, and `choices` narrows a choice field (run has no vllm)."""
    field = FIELDS[name]
    declarations = [field.cli] + ([field.short] if field.short else [])
    kind = click.Choice(choices or field.choices) if field.choices else TableValue(field)
    text = (help or field.help) + (f"  [default: {shown_default}]" if shown_default else "")
    return click.option(*declarations, type=kind, help=text, **more)


# What leaving a sampling option out of `run` means, where the value itself does not say.
_SAMPLING_DEFAULTS = {"max_tokens": "until the model ends its turn or the context is full",
                      "seed": "random, shown by --json"}


def sampling_options(command: Callable) -> Callable:
    """Every sampling field of the table as an option, with the library's defaults; the command
    gets them as keyword arguments named as SamplingOptions' fields."""
    defaults = {f.name: f.default for f in dataclasses.fields(SamplingOptions)}
    for field in reversed(SAMPLING_FIELDS):
        command = option(field.name, shown_default=_SAMPLING_DEFAULTS.get(field.name),
                         default=defaults[field.name], show_default=field.name not in _SAMPLING_DEFAULTS)(command)
    return command


def sampling_values(values: dict) -> dict:
    """The sampling fields among a command's keyword arguments, taken out of `values`."""
    return {field.name: values.pop(field.name) for field in SAMPLING_FIELDS}


draft_option = click.option(
    "--draft", metavar="MODEL",
    help="A small model with the same vocabulary (e.g. the 0.5B of the model's family) that drafts tokens for "
         "speculation: --spec auto uses it where the measured costs say it pays, --spec draft always. Its "
         "memory is planned beside the model's.  [default: none]")
