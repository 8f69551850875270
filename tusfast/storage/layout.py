"""`--dir-layout`: spread uploads over date directories such as 2026/11/21 (UTC, zero-padded)."""

from __future__ import annotations

import string
import time

FIELDS = {"year": "%Y", "month": "%m", "day": "%d", "hour": "%H", "minute": "%M"}


class DirLayout:
    def __init__(self, template: str) -> None:
        self.template = template.strip("/")
        self._check()

    def _check(self) -> None:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(self.template)
                  if name is not None]
        unknown = {name for name, _, _ in fields} - set(FIELDS)
        if unknown or any(spec or conv for _, spec, conv in fields) or any(part in ("", ".", "..") for part in self.template.split("/")):
            raise ValueError(f"invalid dir layout {self.template!r}: use /-separated parts built from "
                             "{year} {month} {day} {hour} {minute}, e.g. '{year}/{month}/{day}'")

    def directory(self, when: float) -> str:
        """The relative directory for an upload created at Unix time `when`."""
        moment = time.gmtime(when)
        return self.template.format(**{name: time.strftime(code, moment) for name, code in FIELDS.items()})
