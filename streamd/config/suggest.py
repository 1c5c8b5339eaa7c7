"""'did you mean ...?' for an unknown key: the closest key the schema has at that place."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import BaseModel


def did_you_mean(root: type[BaseModel], loc: Sequence[int | str]) -> str:
    """`` (did you mean 'x'?)`` for the unknown key at ``loc``, or '' when none is close."""
    model = _model_at(root, loc[:-1])
    if model is None or not loc:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):  # a list's index: the list's item model is already taken
            continue
        field = model.model_fields.get(part)
        inner = None if field is None else _inner_model(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(tp: Any) -> type[BaseModel] | None:
    """The model in an annotation: itself, or inside list[...], X | None, Annotated[...]."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
