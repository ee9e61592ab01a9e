"""``package.module:attribute`` strings: how a spec names a user's model factory or loader.

Kept apart from what is built from them so that a spec can check a path (does the
module import, does the attribute exist) long before anything is trained.
"""

from __future__ import annotations

import importlib
from typing import Any

from qatlab.sources import is_import_path


class ImportPathError(ImportError):
    """An import path that is malformed, whose module does not import, or whose attribute is missing."""


def resolve(path: str, what: str = "object") -> Any:
    """The object ``package.module:attr`` (``attr`` may be dotted) names.

    ``what`` ("model factory", "dataset loader") goes into the error messages.
    """
    if not isinstance(path, str) or not is_import_path(path):
        raise ImportPathError(f"{what} {path!r}: not an import path of the form package.module:attribute")
    module_name, attr = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        # A module that is missing here may be missing on the cluster's workers too:
        # say how to make it importable everywhere.
        raise ImportPathError(
            f"{what} {path!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}); install it "
            "(pip install -e), put its folder on PYTHONPATH, or ship it to Ray workers (runtime_env py_modules)"
        ) from e
    except Exception as e:  # the module imports but raises: its own bug, named as such
        raise ImportPathError(f"{what} {path!r}: importing module {module_name!r} raised {type(e).__name__}: {e}") from e
    done = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(f"{what} {path!r}: {done!r} has no attribute {part!r}")
        obj = getattr(obj, part)
        done = f"{done}:{part}" if done == module_name else f"{done}.{part}"
    if not callable(obj):
        raise ImportPathError(f"{what} {path!r}: {type(obj).__name__} is not callable")
    return obj
