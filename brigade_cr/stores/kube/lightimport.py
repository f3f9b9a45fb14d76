"""
Import the ``kubernetes`` package's configuration loaders without its
generated API client.

brigade-cr uses only ``kubernetes.config`` (the kubeconfig, in-cluster and
exec-credential loaders) and ``kubernetes.client.Configuration``, which they
fill in. But any import from the package runs ``kubernetes/__init__.py``,
which imports ``kubernetes.client`` whole: every API class and several
hundred model classes, about 20 MB of resident memory that the gateway never
uses (measured in docs/performance.md, "Memory").

``install()``, called before the first import of the package, puts two
package modules in ``sys.modules`` in its place: ``kubernetes`` and
``kubernetes.client``, each with the real package's ``__path__`` (so every
submodule imports as usual) but without running its ``__init__``.
``kubernetes.client`` gets ``Configuration`` and a stand-in ``ApiClient``
that imports the real one when it is first made. Anything else asked of
either module (``kubernetes.client.CoreV1Api``, ``kubernetes.watch``...)
runs the real ``__init__`` in that module then and answers from it, so code
that uses the whole package in the same process still gets it, only later.
If the package was imported already, ``install()`` leaves it alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

PACKAGE = "kubernetes"
CLIENT = "kubernetes.client"


def install() -> bool:
    """Put the light package modules in place; False when the package was already imported (or is absent)."""
    if PACKAGE in sys.modules:
        return False
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(next(iter(spec.submodule_search_locations)))
    package = _light_module(PACKAGE, root)
    client = _light_module(CLIENT, root / "client")
    sys.modules[PACKAGE] = package
    sys.modules[CLIENT] = client
    package.client = client  # type: ignore[attr-defined]
    try:
        configuration = importlib.import_module("kubernetes.client.configuration")
    except BaseException:
        del sys.modules[PACKAGE], sys.modules[CLIENT]
        raise
    client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
    client.ApiClient = _ApiClient  # type: ignore[attr-defined]
    return True


def is_light() -> bool:
    """True while ``kubernetes.client`` is the light module (its real ``__init__`` has not run)."""
    client = sys.modules.get(CLIENT)
    return client is not None and getattr(client, "_brigade_cr_light", False) is True


def _light_module(name: str, directory: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(directory)]
    module.__file__ = str(directory / "__init__.py")
    module.__package__ = name
    module.__spec__ = importlib.util.spec_from_file_location(
        name, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    module._brigade_cr_light = True  # type: ignore[attr-defined]

    def __getattr__(attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        _complete(module)
        try:
            # Newer packages' own __init__ defines a lazy __getattr__ too.
            return getattr(module, attribute)
        except AttributeError:
            # A submodule not imported yet: ``kubernetes.watch``.
            return importlib.import_module(f"{name}.{attribute}")

    setattr(module, "__getattr__", __getattr__)  # noqa: B010 - a module-level __getattr__ (PEP 562)
    return module


def _complete(module: types.ModuleType) -> None:
    """Run the real package ``__init__`` in ``module``, once."""
    if not module.__dict__.pop("_brigade_cr_light", False):
        return
    del module.__dict__["__getattr__"]
    if module.__dict__.get("ApiClient") is _ApiClient:
        del module.__dict__["ApiClient"]  # the real __init__ provides it, eagerly or lazily
    assert module.__file__ is not None
    source = Path(module.__file__).read_text(encoding="utf-8")
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - the package's own __init__


class _ApiClient:
    """``kubernetes.client.ApiClient`` for the loaders: the real class, imported when one is first made."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        client = sys.modules[CLIENT]
        _complete(client)
        return client.ApiClient(*args, **kwargs)
