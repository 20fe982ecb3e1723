"""Print the Firestore collection groups the service writes, one per line
(or, with ``--ttl-field``, the name of the field their TTL policies use; with
``--unindexed``, "GROUP FIELD" for every stored field no query filters or orders on, which
setup exempts from single-field indexing).

They come from ``COLLECTION_GROUPS`` in ``agent/store/schema.py``, read statically (with
``ast``) so that the setup script needs only a Python 3 interpreter, not the service's
dependencies. Names are followed to module-level string constants, also across
``from agent.x import NAME`` and ``from .x import NAME``; anything else is an error rather
than a guess, because a collection group without a TTL policy keeps its documents forever.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_MODULE = "agent.store.schema"
NAME = "COLLECTION_GROUPS"
TTL_NAME = "TTL_FIELD"


DOC_TYPES = {
    "SessionDoc": "SESSIONS",
    "ChunkDoc": "CHUNKS",
    "KeyDoc": "IDEMPOTENCY",
    "SpendShardDoc": "SPEND",
    "SpendDoc": "SPEND_TURNS",
    "ToolRunDoc": "TOOL_RUNS",
    "RunDoc": "RUNS",
    "RunEventDoc": "RUN_EVENTS",
    "RunStateDoc": "RUN_STATE",
    "SessionRunsDoc": "SESSION_RUNS",
}
"""Each document TypedDict of the schema, and the constant naming its collection group.
Every group in COLLECTION_GROUPS must have one: ``unindexed`` refuses a group without (its
fields would keep their default indexes unnoticed)."""
QUERIED = frozenset(
    {
        ("IDEMPOTENCY", "SESSION_ID"),
        ("TOOL_RUNS", "CALL_ID"),
        ("SPEND_TURNS", "HOLDING"),
        ("SPEND_TURNS", "CHARGE_MICROS"),
    }
)
"""(group constant, field constant) pairs a query filters on or aggregates: agent_idempotency
by session_id (store/idempotency_records.py, deleting a session's keys), agent_tool_runs by
call_id (store/tool_runs.py, a pause reusing a call id), agent_spend_turns by holding and
the sum of charge_micros (store/spend.py, a principal's day). These keep their index;
tests/test_deploy_indexes.py fails when the code queries a field not listed here."""


class Unresolvable(Exception):
    pass


def _module_path(module: str) -> Path:
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise Unresolvable(f"module {module} not found under {REPO}")


def _bindings(module: str) -> tuple[dict[str, ast.expr], dict[str, tuple[str, str]]]:
    tree = ast.parse(_module_path(module).read_text(encoding="utf-8"))
    assigned: dict[str, ast.expr] = {}
    imported: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            assigned[node.target.id] = node.value
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node.module or "", node.level)
            for alias in node.names:
                imported[alias.asname or alias.name] = (source, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    imported[alias.asname] = (alias.name, "")
    return assigned, imported


def _absolute(module: str, name: str, level: int) -> str:
    """The absolute module name of ``from <level dots><name> import ...`` inside ``module``."""
    if level == 0:
        return name
    package = module.split(".")[:-level]
    return ".".join([*package, *([name] if name else [])])


def _is_module(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def resolve(module: str, name: str, depth: int = 0) -> str | tuple[str, ...]:
    if depth > 10:
        raise Unresolvable(f"{module}.{name}: too many indirections")
    assigned, imported = _bindings(module)
    if name in assigned:
        return _evaluate(module, assigned[name], depth)
    if name in imported:
        other, other_name = imported[name]
        return resolve(other, other_name, depth + 1)
    raise Unresolvable(f"{name} is not defined at module level in {module}")


def resolve_expression(module: str, node: ast.expr) -> str | tuple[str, ...]:
    """Evaluate an expression written in ``module``: a string, a constant's name, or
    ``other_module.NAME`` where other_module was imported."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        _, imported = _bindings(module)
        if node.value.id in imported:
            source, name = imported[node.value.id]
            target = f"{source}.{name}" if name else source
            if _is_module(target):
                return resolve(target, node.attr)
    return _evaluate(module, node, 0)


def _evaluate(module: str, node: ast.expr, depth: int) -> str | tuple[str, ...]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return resolve(module, node.id, depth + 1)
    if isinstance(node, (ast.Tuple, ast.List)):
        items: list[str] = []
        for element in node.elts:
            value = _evaluate(module, element, depth)
            items.extend(value if isinstance(value, tuple) else (value,))
        return tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _evaluate(module, node.left, depth), _evaluate(module, node.right, depth)
        if isinstance(left, tuple) and isinstance(right, tuple):
            return left + right
    raise Unresolvable(f"cannot evaluate {ast.unparse(node)!r} in {module} statically")


def collection_groups() -> tuple[str, ...]:
    value = resolve(SOURCE_MODULE, NAME)
    groups = value if isinstance(value, tuple) else (value,)
    if not groups:
        raise Unresolvable(f"{SOURCE_MODULE}.{NAME} is empty")
    return groups


def ttl_field() -> str:
    value = resolve(SOURCE_MODULE, TTL_NAME)
    if not isinstance(value, str):
        raise Unresolvable(f"{SOURCE_MODULE}.{TTL_NAME} is not a string")
    return value


def _typed_dict_fields(name: str) -> list[str]:
    tree = ast.parse(_module_path(SOURCE_MODULE).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return [
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            ]
    raise Unresolvable(f"{name} is not a class in {SOURCE_MODULE}")


def unindexed(doc_types: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(group, field) for every field of every document type that no query uses.
    ``doc_types``: {TypedDict name: group constant}, DOC_TYPES by default."""
    doc_types = DOC_TYPES if doc_types is None else doc_types
    typed = {resolve(SOURCE_MODULE, name) for name in doc_types.values()}
    untyped = [group for group in collection_groups() if group not in typed]
    if untyped:
        raise Unresolvable(
            f"collection groups without a document type in DOC_TYPES: {', '.join(untyped)}"
            " (add the group's TypedDict to deploy/collection_groups.py)"
        )
    queried = {
        (str(resolve(SOURCE_MODULE, group)), str(resolve(SOURCE_MODULE, field)))
        for group, field in QUERIED
    }
    pairs: list[tuple[str, str]] = []
    for doc_type, group_name in doc_types.items():
        group = resolve(SOURCE_MODULE, group_name)
        if not isinstance(group, str):
            raise Unresolvable(f"{group_name} is not a string")
        for field in _typed_dict_fields(doc_type):
            if (group, field) not in queried:
                pairs.append((group, field))
    return pairs


def main(argv: list[str]) -> int:
    try:
        if argv == ["--ttl-field"]:
            print(ttl_field())
        elif argv == ["--unindexed"]:
            print("\n".join(f"{group} {field}" for group, field in unindexed()))
        elif not argv:
            print("\n".join(dict.fromkeys(collection_groups())))
        else:
            print("usage: collection_groups.py [--ttl-field | --unindexed]", file=sys.stderr)
            return 2
    except Unresolvable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
