"""One mechanism for a config field's command-line form: :func:`option` puts its help, choices and flag names
in the field's metadata, beside the field; ``recursion-env train`` derives its options from the fields."""

from __future__ import annotations

from dataclasses import MISSING, field


def option(default=MISSING, help: str | None = None, *, factory=MISSING, choices=None, flags: tuple | None = None):
    """A dataclass field with its ``train`` help (``choices``: the values it takes; ``flags``: its spellings when
    not ``--`` + the field name with dashes)."""
    metadata = {k: v for k, v in (("help", help), ("choices", choices), ("flags", flags)) if v is not None}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)
