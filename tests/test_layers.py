"""
The import direction between brigade_cr's layers, read from the source with
``ast`` (nothing is imported, so a module that would fail to import, or that
imports something only under ``TYPE_CHECKING``, is still checked).

- ``core`` (the domain and the use case) imports no HTTP or metrics library
  (``twisted.web``, ``klein``, ``treq``, ``werkzeug``, ``prometheus_client``)
  and, of brigade_cr, only ``core``: with one allowance, ``core/gateway.py``
  importing ``brigade_cr.registries`` for the default payload formats
  (``Gateway.formats``), since every caller (``app/tap.py``, the tests)
  relies on that default. The allowance is named, module by module, and
  ``test_allowances_are_used`` fails once it is no longer needed.
- ``registries`` (pure parsers) import the same libraries as core, and of
  brigade_cr only ``core`` (and each other).
- ``stores`` never import ``web``, ``app`` or ``testing``.
- ``web`` (the HTTP edge) imports no ``stores``, ``app`` or ``testing``.
- ``testing`` (the in-memory doubles) imports only ``core``.
- Only ``app`` (the wiring) may import ``app``.

Names in the root package (``from brigade_cr import __version__``) are
allowed everywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import attrs

PACKAGE = Path(__file__).resolve().parent.parent / "brigade_cr"

# Libraries of the HTTP edge and the metrics endpoint: nothing pure uses them.
EDGE_LIBRARIES = ("twisted.web", "klein", "treq", "werkzeug", "prometheus_client")
LAYERS = ("core", "registries", "web", "stores", "app", "testing")


@attrs.frozen
class Rule:
    """What modules of one layer may import: ``brigade_cr`` layers allowed (None: any but ``forbidden``)."""

    allowed: tuple[str, ...] | None = None
    forbidden: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()


RULES = {
    "core": Rule(allowed=("core",), libraries=EDGE_LIBRARIES),
    "registries": Rule(allowed=("core", "registries"), libraries=EDGE_LIBRARIES),
    "stores": Rule(forbidden=("web", "app", "testing")),
    "web": Rule(forbidden=("stores", "app", "testing")),
    "testing": Rule(allowed=("core", "testing")),
    "app": Rule(),
}

# (importing module, imported module or package): the reviewed exceptions.
ALLOWANCES = frozenset({("brigade_cr.core.gateway", "brigade_cr.registries")})


@attrs.frozen
class Import:
    """``module`` (in ``path``, at ``line``) imports ``target`` (as written: ``statement``)."""

    module: str
    path: str
    line: int
    target: str
    statement: str


def module_name(package: Path, path: Path) -> str:
    """The dotted name of the module in ``path`` under ``package`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(package: Path, dotted: str) -> bool:
    """True when ``dotted`` names a module or package on disk under ``package``."""
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    base = package / relative
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(package: Path, module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    # A package's own __init__ is its own anchor; a module's is its package.
    anchor = module.split(".")
    if path.name != "__init__.py":
        anchor.pop()
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imports_in(package: Path, path: Path) -> list[Import]:
    """
    Every import in the module at ``path``, resolved to the module it names:
    ``from X import a`` is ``X.a`` when that is a brigade_cr module, else
    ``X`` (for other libraries, ``X.a`` is kept too, so ``from twisted
    import web`` is ``twisted.web``); relative imports resolved; calls of
    ``importlib.import_module`` and ``__import__`` with a literal name too.
    """
    module = module_name(package, path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    shown = str(path.relative_to(package.parent))
    found: list[Import] = []
    root = package.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, shown, node.lineno, alias.name, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(package, module, path, node)
            for alias in node.names:
                statement = f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                candidate = f"{source}.{alias.name}"
                is_own = source == root or source.startswith(root + ".")
                if is_own:
                    target = candidate if _is_module(package, candidate) else source
                else:
                    target = candidate if alias.name != "*" else source
                found.append(Import(module, shown, node.lineno, target, statement))
        elif isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if name in ("import_module", "__import__") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append(Import(module, shown, node.lineno, first.value, f"{name}({first.value!r})"))
    return sorted(found, key=lambda each: each.line)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(package: Path, module: str) -> str | None:
    """The layer (``core``, ``web``, ...) of a brigade_cr module, or None for the root package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == package.name else None


def violation(package: Path, found: Import) -> str | None:
    """Why ``found`` breaks its layer's rule, or None when it does not."""
    layer = layer_of(package, found.module)
    if layer is None:
        return None
    rule = RULES.get(layer)
    where = f"{found.path}:{found.line}: {found.module} imports {found.target} ({found.statement})"
    if rule is None:
        return f"{where}: layer {layer!r} has no rule in tests/test_layers.py"
    for library in rule.libraries:
        if _within(found.target, library):
            return f"{where}: {layer} may not import {library}"
    if not _within(found.target, package.name):
        return None
    target_layer = layer_of(package, found.target)
    if target_layer is None or not _is_module(package, f"{package.name}.{target_layer}"):
        return None  # the root package's own names
    if (found.module, found.target) in ALLOWANCES:
        return None
    if rule.allowed is not None and target_layer not in rule.allowed:
        return f"{where}: {layer} may import only {', '.join(rule.allowed)} of {package.name}"
    if target_layer in rule.forbidden or (target_layer == "app" and layer != "app"):
        return f"{where}: {layer} may not import {package.name}.{target_layer}"
    return None


def scan(package: Path) -> tuple[list[Import], list[str]]:
    """Every import under ``package`` and every violation, in file order."""
    imports: list[Import] = []
    for path in sorted(package.rglob("*.py")):
        imports.extend(imports_in(package, path))
    problems = [problem for problem in (violation(package, each) for each in imports) if problem is not None]
    return imports, problems


def test_imports_follow_the_layers() -> None:
    """No module imports against its layer's direction; a failure names each module, line and import."""
    _, problems = scan(PACKAGE)
    assert problems == [], "imports against the layers:\n" + "\n".join(problems)


def test_every_module_is_in_a_known_layer() -> None:
    """Each module is in one of the six layers or is the root package, and every layer has modules."""
    names = [module_name(PACKAGE, path) for path in sorted(PACKAGE.rglob("*.py"))]
    layers = {layer_of(PACKAGE, name) for name in names}
    assert layers == {None, *LAYERS}
    assert names.count("brigade_cr") == 1


def test_allowances_are_used() -> None:
    """Every allowance is an import that exists (and would break its rule without it): none is stale."""
    imports, _ = scan(PACKAGE)
    used = {(each.module, each.target) for each in imports} & ALLOWANCES
    assert used == ALLOWANCES


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_check_names_what_breaks_it(tmp_path: Path) -> None:
    """
    Over a made-up tree, every kind of breach is reported with its file,
    line, module, target and statement, and allowed imports are not.
    """
    package = tmp_path / "brigade_cr"
    for layer in LAYERS:
        _write(package, f"{layer}/__init__.py", "")
    _write(package, "__init__.py", "__version__ = '0'\n")
    _write(package, "core/values.py", "")
    _write(package, "stores/kube/__init__.py", "")
    _write(package, "web/routes.py", "")
    _write(package, "app/metrics.py", "")
    _write(
        package,
        "core/bad.py",
        "from brigade_cr.core.values import X\n"
        "from brigade_cr import __version__\n"
        "from twisted.internet.defer import Deferred\n"
        "from twisted import web\n"
        "import treq\n"
        "from brigade_cr.app.metrics import GatewayMetrics\n"
        "from ..web import routes\n"
        "from . import values\n"
        "if False:\n"
        "    from brigade_cr.stores import kube\n"
        "importlib.import_module('klein')\n",
    )
    _write(package, "registries/fmt.py", "from brigade_cr.web.routes import x\nfrom brigade_cr.registries import y\n")
    _write(package, "stores/kube/api.py", "from ...web.routes import a\nfrom brigade_cr.core import values\n")
    _write(package, "testing/double.py", "from brigade_cr.stores.kube import api\n")
    _write(package, "web/edge.py", "from brigade_cr.app import metrics\nimport klein\n")
    _, problems = scan(package)
    assert problems == [
        "brigade_cr/core/bad.py:4: brigade_cr.core.bad imports twisted.web (from twisted import web):"
        " core may not import twisted.web",
        "brigade_cr/core/bad.py:5: brigade_cr.core.bad imports treq (import treq): core may not import treq",
        "brigade_cr/core/bad.py:6: brigade_cr.core.bad imports brigade_cr.app.metrics"
        " (from brigade_cr.app.metrics import GatewayMetrics): core may import only core of brigade_cr",
        "brigade_cr/core/bad.py:7: brigade_cr.core.bad imports brigade_cr.web.routes (from ..web import routes):"
        " core may import only core of brigade_cr",
        "brigade_cr/core/bad.py:10: brigade_cr.core.bad imports brigade_cr.stores.kube"
        " (from brigade_cr.stores import kube): core may import only core of brigade_cr",
        "brigade_cr/core/bad.py:11: brigade_cr.core.bad imports klein (import_module('klein')):"
        " core may not import klein",
        "brigade_cr/registries/fmt.py:1: brigade_cr.registries.fmt imports brigade_cr.web.routes"
        " (from brigade_cr.web.routes import x): registries may import only core, registries of brigade_cr",
        "brigade_cr/stores/kube/api.py:1: brigade_cr.stores.kube.api imports brigade_cr.web.routes"
        " (from ...web.routes import a): stores may not import brigade_cr.web",
        "brigade_cr/testing/double.py:1: brigade_cr.testing.double imports brigade_cr.stores.kube.api"
        " (from brigade_cr.stores.kube import api): testing may import only core, testing of brigade_cr",
        "brigade_cr/web/edge.py:1: brigade_cr.web.edge imports brigade_cr.app.metrics"
        " (from brigade_cr.app import metrics): web may not import brigade_cr.app",
    ]
