"""A user's model by import path: ``model: "package.module:factory"`` with ``model_args``.

The factory is a callable returning an ``nn.Module`` (a function, or an ``nn.Module``
class). What only the data knows is passed to it when its signature names it:

- ``num_classes``: the number of classes of the dataset;
- ``input_shape``: ``(C, H, W)`` of one input;
- ``in_channels``: ``C``.

Only explicitly named parameters receive them (not ``**kwargs``), so a factory that
does not ask for them is called with ``model_args`` alone. ``model_args`` may not
give them itself: the data decides them, and two sources could disagree.
The QAT pass rewrites the model with torch.fx, so it has to trace (see ``qatlab.models``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import nn

from qatlab.importpath import ImportPathError, resolve
from qatlab.sources import model_kind

DATA_PARAMS = ("num_classes", "input_shape", "in_channels")


class UserModelError(ValueError):
    """A model factory that cannot be called as configured, or that returns no nn.Module."""


def resolve_factory(path: str) -> Callable[..., Any]:
    """The factory ``path`` names; :class:`~qatlab.importpath.ImportPathError` if it does not import."""
    return resolve(path, "model factory")


def data_kwargs(factory: Callable[..., Any], num_classes: int, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The data-derived keyword arguments ``factory``'s signature asks for."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature: pass nothing
        return {}
    offer = {"num_classes": num_classes, "input_shape": tuple(input_shape), "in_channels": input_shape[0]}
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in offer.items() if k in named}


def build_user_model(
    path: str, num_classes: int, input_shape: tuple[int, int, int], model_args: Mapping[str, Any] | None = None
) -> nn.Module:
    """Call the factory ``path`` with the data-derived arguments it names and ``model_args``."""
    args = dict(model_args or {})
    clash = sorted(set(args) & set(DATA_PARAMS))
    if clash:
        raise UserModelError(f"model {path!r}: model_args may not set {', '.join(clash)}: it comes from the data")
    factory = resolve_factory(path)
    kwargs = {**data_kwargs(factory, num_classes, input_shape), **args}
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise UserModelError(f"model {path!r}: cannot be called with {sorted(kwargs)}: {e}") from None
    except ValueError:  # no signature to check against: let the call say
        pass
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserModelError(f"model {path!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def make_model(name: str, num_classes: int, input_shape: tuple[int, int, int], model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """A zoo model by name or a user model by import path: what a TrainConfig's ``model`` names."""
    if model_kind(name) == "import":
        return build_user_model(name, num_classes, input_shape, model_args)
    if model_args:
        raise UserModelError(f"model_args apply to an import-path model only, not the zoo's {name!r}")
    from qatlab.models import build_model

    return build_model(name, num_classes, input_shape)


__all__ = ["DATA_PARAMS", "ImportPathError", "UserModelError", "build_user_model", "data_kwargs", "make_model", "resolve_factory"]
