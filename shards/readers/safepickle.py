"""A pickle reader that builds plain data only: lists, dicts, tuples, sets, strings, bytes, numbers, booleans, None.

RefCOCO's `refs(unc).p` ships as a pickle; `pickle.load` on a file from the internet runs whatever callable the file
names. Here every opcode that would look a class or function up (`GLOBAL`, `STACK_GLOBAL`, hence `REDUCE`, `BUILD`
of an object, `NEWOBJ`) fails at the lookup, except `set` and `frozenset` (protocols 0-3 write sets as a call of
them), and persistent ids are refused, so nothing but the built-in containers and scalars can come out, and
nothing else is called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

PLAIN_CLASSES = {"set": set, "frozenset": frozenset}


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names a class or function (or a persistent id): it is not plain data."""


class PlainDataUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that refuses every global lookup and persistent id."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in PLAIN_CLASSES:
            return PLAIN_CLASSES[name]
        raise RefusedPickle(f"pickle names {module}.{name}; only plain containers and numbers are read")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("pickle uses a persistent id; only plain containers and numbers are read")


def load_plain(data: bytes, what: str) -> Any:
    """The plain data in `data`; a `ValueError` naming `what` for a pickle that names any class, or a broken one.

    Python 2 `str` objects (the released RefCOCO files were written by Python 2) are decoded as UTF-8.
    """
    try:
        return PlainDataUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except RefusedPickle as e:
        raise ValueError(f"{what}: refused: {e}") from None
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, TypeError, IndexError) as e:
        raise ValueError(f"{what}: not a readable pickle: {e}") from None
