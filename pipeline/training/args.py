"""Command-line flags of a job from its config dataclass: one ``--flag`` per field."""

from __future__ import annotations

import argparse
import dataclasses


def add_config_arguments(parser: argparse.ArgumentParser, config: type, help: dict[str, str], choices: dict[str, list] | None = None) -> None:
    """``--field-name`` per field of ``config``: required when the field has no default, an
    on/off pair for a bool, ``choices`` where given, else the default's type."""
    for field in dataclasses.fields(config):
        flag = "--" + field.name.replace("_", "-")
        text = help.get(field.name, "")
        if field.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, type=str, help=text)
            continue
        text = f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=text)
        elif choices and field.name in choices:
            parser.add_argument(flag, choices=choices[field.name], default=field.default, help=text)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default, help=text)
