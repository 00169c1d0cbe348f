"""Building a config part that takes some of its parent's shared arguments: a loss term, a metric.

The parent (the composite loss, the metric set) holds arguments its parts may need, such as
`ignore_index` or `num_classes`; each part's constructor gets those it names in its signature and
no others. Nothing reaches a part through `**kwargs`: `nn.Module.__init__` and torchmetrics'
`Metric.__init__` take `**kwargs` only to refuse what they do not know, so a user's class without
an `__init__` of its own would fail on an argument it never asked for.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import hydra

from src.utils.errors import UserError, find_user_error

# How a parameter must be declared to receive a shared argument: by name.
NAMED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def shared_arguments(target: str, shared: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `shared` whose names the constructor of `target` declares."""
    parameters = inspect.signature(hydra.utils.get_object(target)).parameters
    named = {name for name, parameter in parameters.items() if parameter.kind in NAMED_KINDS}
    return {key: value for key, value in shared.items() if key in named}


def instantiate_part(
    path: str,
    spec: Mapping[str, Any],
    shared: Mapping[str, Any],
    own_error: type[Exception],
    raise_as: type[UserError],
) -> Any:
    """`instantiate(spec)` with the shared arguments it names; every failure names the config `path`.

    A part raises `own_error` with the message starting at its argument's name (`gamma=-1: ...`),
    which becomes `<path>.gamma=-1: ...`; any other failure becomes `<path> (<target>): <why>`.
    """
    target = str(spec["_target_"])
    try:
        return hydra.utils.instantiate({**shared_arguments(target, shared), **spec})
    except Exception as err:
        user_error = find_user_error(err)
        if isinstance(user_error, own_error):
            raise raise_as(f"{path}.{user_error}") from None
        detail = str(err.__cause__ or err).splitlines()[0]
        raise raise_as(f"{path} ({target}): {detail}") from None
