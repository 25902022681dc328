"""The house's shape, read from the source: no import circles and no import running back up the
layers (an import inside a function counts: it still ties the two modules together), engines
registered by one line each, and one option table behind every front end."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Top first: a module may import its own layer and those below it (README, "Layout").
LAYERS = [
    ("localllm.__main__",),
    ("localllm.cli", "localllm.tui"),
    ("localllm.server", "localllm.doctor"),
    ("localllm.engine", "localllm.session", "localllm.chat_images"),
    ("localllm", "localllm.model"),
    ("localllm.registry", "localllm.store", "localllm.transfer", "localllm.ollama_store"),
    ("localllm.backends",),
    ("localllm.generation",),
    ("localllm.hub", "localllm.catalog", "localllm.references", "localllm.gguf_info", "localllm.gguf_header",
     "localllm.gguf_names", "localllm.hardware", "localllm.status", "localllm.crash", "localllm.errorlog",
     "localllm.config", "localllm.formats", "localllm.images", "localllm.projector"),
    ("localllm.errors", "localllm.events", "localllm.options", "localllm.printable", "localllm.safejson"),
]


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for folder, package in ((ROOT / "localllm", "localllm"), (ROOT / "tui", "localllm.tui"), (ROOT / "models", "localllm.models")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            found[".".join((package, *(parts[:-1] if is_package else parts)))] = (path, is_package)
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The localllm modules `module` imports, at any depth of its code."""
    path, is_package = MODULES[module]
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _rank(module: str) -> int:
    matches = [(len(prefix), rank) for rank, names in enumerate(LAYERS) for prefix in names
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS (and to the README's layout)"
    return max(matches)[1]


def test_every_module_is_in_a_layer_and_no_import_runs_back_up():
    upward = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() for target in targets
                    if _rank(target) < _rank(module))
    assert upward == []


def test_there_are_no_import_circles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert circles == []


def test_an_engine_is_a_folder_and_one_registry_line():
    from localllm.backends import REGISTRY

    for name, target in REGISTRY.items():
        module = target.partition(":")[0]
        assert module.startswith(f"localllm.backends.{name}."), f"{name}'s backend lives in backends/{name}/"
        assert (ROOT / "localllm" / "backends" / name / "__init__.py").is_file()


# Readings a front end owns: the token limit's API-specific names (OpenAI's two, Ollama's negative
# num_predict), the seed an answer used as run --json reports it, and the two numbers the chat's
# form shows (checked by the table).
OWN = {"localllm/cli/run.py": {"seed"}, "localllm/server/schemas.py": {"max_tokens"},
       "tui/dialogs.py": {"temperature", "top_p"}}


@pytest.mark.parametrize("front_end", sorted(OWN))
def test_sampling_fields_are_declared_in_the_option_table_only(front_end):
    """A sampling option added to the table reaches run, the server's two APIs and the chat's form
    with no line of theirs naming it: they read localllm.options' table."""
    from localllm.options import SAMPLING_FIELDS

    text = (ROOT / front_end).read_text()
    named = {field.name for field in SAMPLING_FIELDS
             if any(f'"{spelling}"' in text for spelling in (field.name, field.cli))}
    assert named <= OWN[front_end], f"{front_end} declares {sorted(named - OWN[front_end])}: read them from the table"
