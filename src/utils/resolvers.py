"""OmegaConf resolvers seglab's configs use; registered once, when `src` is imported.

`${seglab.required:'what to pass'}` marks a value a config needs from the user. An experiment
cannot use `???` for that when an earlier config (its model or data group) already set the key:
OmegaConf's merge keeps the earlier value rather than a `???` merged on top of it, so the run
would start silently with the group's default (an FCN-16s without its FCN-32s, say). The resolver
raises `RequiredValueError` naming the key when the value is read, unless it was overridden.

`${seglab.class_names:cityscapes}` and `${seglab.palette:cityscapes}` read a dataset's class names
and colours from its label table in code (src/data/label_maps.py), so they are written once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NoReturn

from omegaconf import DictConfig, ListConfig, OmegaConf

from src.utils.errors import UserError, find_user_error

REQUIRED = "seglab.required"
CLASS_NAMES = "seglab.class_names"
PALETTE = "seglab.palette"


class RequiredValueError(UserError):
    """A value the config marks `${seglab.required:...}` was not given."""


def required(what: str, *, _node_: Any) -> NoReturn:
    """The resolver: always raises, naming the key being read and what to pass."""
    key = _node_._get_full_key(key=None)
    raise RequiredValueError(f"{key} is required by this config and has no value: pass {key}=<{what}>")


def register_resolvers() -> None:
    """Register seglab's resolvers (idempotent)."""
    if not OmegaConf.has_resolver(REQUIRED):
        OmegaConf.register_new_resolver(REQUIRED, required)
    # imported here: src/data/label_maps.py imports src.utils.errors, which this module's import precedes
    from src.data.label_maps import class_names_of, palette_of

    if not OmegaConf.has_resolver(CLASS_NAMES):
        OmegaConf.register_new_resolver(CLASS_NAMES, class_names_of)
    if not OmegaConf.has_resolver(PALETTE):
        OmegaConf.register_new_resolver(PALETTE, palette_of)


def unset_required_keys(cfg: DictConfig | ListConfig, prefix: str = "") -> Iterator[str]:
    """The keys of `cfg` still marked `${seglab.required:...}` (nothing is resolved)."""
    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else enumerate(cfg)
    for key, _ in items:
        path = f"{prefix}{key}"
        node = cfg._get_node(key)
        if isinstance(node, DictConfig | ListConfig):
            if not (node._is_none() or node._is_missing() or node._is_interpolation()):
                yield from unset_required_keys(node, f"{path}.")
        elif isinstance(node._value(), str) and f"${{{REQUIRED}:" in node._value():
            yield path


def check_required(cfg: DictConfig) -> None:
    """Raise RequiredValueError for the first required value `cfg` lacks, before anything is built."""
    for key in unset_required_keys(cfg):
        try:
            OmegaConf.select(cfg, key)  # resolving it raises with the resolver's message
        except Exception as err:
            raise (find_user_error(err) or err) from None
