"""The Python in README.md and docs/*.md still matches the code it shows: users copy it.

Every ```python block is checked:

- it compiles;
- every name it imports from a ``herder`` module exists and is public (in its ``__all__``);
- every call it makes on herder's API passes arguments the callee takes, and every
  attribute it reads there exists. The names ``rt`` and ``ctx`` stand for a
  :class:`Runtime` and a :class:`StepContext` (the docs' convention), any other name
  for what herder's public API it was assigned from (``h = rt.start(...)``) or what
  ``herder.runtime`` or ``herder.runtime.testing`` exports under that name; the rest
  (user classes, other libraries) is not followed;
- unless it is a fragment, it runs: as ``__main__``, in a fresh working directory.

**The marker.** A block that cannot run by itself (it uses an ``rt`` made elsewhere, a
remote service, an extra that is not installed, ...) or must not run here (it sets state
every later test in the process would share, as a global tracer provider) has the line
``<!-- fragment -->`` right before its opening fence; Markdown renders the comment as
nothing. An unmarked block runs, so a new example is run unless its author says it
cannot be.

Python in the prose (`Runtime(path, lease=5.0)`) gets the same checks, with required
arguments left out as prose does. Commands, files and links: ``test_docs_references.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _docs import FENCE, PAGES, ROOT, spans

import herder.runtime
import herder.runtime.testing
from herder.runtime import Runtime, RuntimeConfig, StepContext

MARKER = "<!-- fragment -->"
CONVENTION = {"rt": Runtime, "ctx": StepContext}
EXPORTED = {
    name: getattr(module, name)
    for module in (herder.runtime, herder.runtime.testing)
    for name in module.__all__
}


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    code: str
    fragment: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _python_blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m[1] == "python":
                before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
                line = text.count("\n", 0, m.start()) + 1
                found.append(Block(page, line, m[2], before.strip() == MARKER))
    return found


PYTHON = _python_blocks()


# --- calls and attributes -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instance:
    """What an expression evaluates to: an instance of ``cls``."""

    cls: type


@dataclasses.dataclass(frozen=True)
class ListOf:
    """A list of instances of ``cls`` (what a ``for`` over it binds)."""

    cls: type


def _herder(obj: object) -> bool:
    return getattr(obj, "__module__", "").startswith("herder.")


def _has_attribute(cls: type, name: str) -> bool:
    if hasattr(cls, name):
        return True
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    for klass in cls.__mro__[:-1]:  # set in __init__: `self.name = ...`
        try:
            if re.search(rf"\bself\.{name}\b\s*(:[^=\n]*)?=(?!=)", inspect.getsource(klass)):
                return True
        except (OSError, TypeError):
            continue
    return False


def _returns(func: Any) -> object:
    try:
        # names a module imports only for type checkers are found among the exported ones
        hint = typing.get_type_hints(func, localns=EXPORTED).get("return")
    except Exception:  # a forward reference no namespace here resolves
        return None
    if isinstance(hint, type) and _herder(hint):
        return Instance(hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and args and isinstance(args[0], type):
        return ListOf(args[0])
    return None


class Checker(ast.NodeVisitor):
    """Follows the names a block binds to herder's API and checks each use of them."""

    def __init__(self, block: Block, *, partial: bool = False) -> None:
        self.block = block
        self.partial = partial  # code in the text leaves arguments out: `rt.schedule()`
        self.names: dict[str, object] = {}
        self.problems: list[str] = []

    def problem(self, node: ast.AST, what: str) -> None:
        line = self.block.line + getattr(node, "lineno", 0)
        self.problems.append(f"{self.block.page.relative_to(ROOT)}:{line}: {what}")

    def value(self, node: ast.AST) -> object:
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            if node.id in CONVENTION:
                return Instance(CONVENTION[node.id])
            return EXPORTED.get(node.id)
        if isinstance(node, ast.Await):
            return self.value(node.value)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        self.generic_visit(node)  # rt.stats()["host"]: the call inside is checked
        return None

    def attribute(self, node: ast.Attribute) -> object:
        owner = self.value(node.value)
        if isinstance(owner, Instance):
            cls = owner.cls
            if not _has_attribute(cls, node.attr):
                self.problem(node, f"{cls.__name__} has no attribute {node.attr!r}")
                return None
            raw = inspect.getattr_static(cls, node.attr, None)
            if isinstance(raw, property):
                return _returns(raw.fget)
            if inspect.isfunction(raw):  # a method: its signature without self
                return _Method(raw, f"{cls.__name__}.{node.attr}")
            return getattr(cls, node.attr, None)
        if isinstance(owner, type) and _herder(owner):
            if not hasattr(owner, node.attr):
                self.problem(node, f"{owner.__name__} has no attribute {node.attr!r}")
                return None
            return getattr(owner, node.attr)
        return None

    def call(self, node: ast.Call) -> object:
        func = self.value(node.func)
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            self.visit(argument)
        if isinstance(func, _Method):
            target, skip, name = func.function, 1, func.name
        elif callable(func) and _herder(func):
            target, skip, name = func, 0, getattr(func, "__qualname__", repr(func))
        else:
            return None
        self.check_arguments(node, target, skip, name)
        return Instance(target) if isinstance(target, type) else _returns(target)

    def check_arguments(self, node: ast.Call, target: Any, skip: int, name: str) -> None:
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return
        parameters = list(signature.parameters.values())[skip:]
        signature = signature.replace(parameters=parameters)
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        # f(*args), f(**kw) and f(...) (arguments left out) are checked by keyword only
        elided = any(
            isinstance(a, ast.Starred) or (isinstance(a, ast.Constant) and a.value is ...)
            for a in node.args
        )
        if elided or len(keywords) < len(node.keywords):
            open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters)
            for keyword in keywords:
                if keyword not in signature.parameters and not open_ended:
                    self.problem(node, f"{name}() takes no argument {keyword!r}")
        else:
            try:
                bind = signature.bind_partial if self.partial else signature.bind
                bind(*node.args, **dict.fromkeys(keywords))
            except TypeError as exc:
                self.problem(node, f"{name}(): {exc}")
                return
        if target is Runtime:  # Runtime(path, **overrides): the overrides are config fields
            fields = {f.name for f in dataclasses.fields(RuntimeConfig)}
            for keyword in keywords:
                if keyword not in fields and keyword not in signature.parameters:
                    self.problem(node, f"Runtime() takes no setting {keyword!r}")

    def bind(self, target: ast.AST, value: object) -> None:
        if isinstance(target, ast.Name) and value is not None:
            self.names[target.id] = value

    def visit_Call(self, node: ast.Call) -> None:
        self.call(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.attribute(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        value = self.value(node.value)
        for target in node.targets:
            self.bind(target, value)

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            value = self.value(item.context_expr)
            if item.optional_vars is not None:
                self.bind(item.optional_vars, value)
        for statement in node.body:
            self.visit(statement)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> None:
        self.visit_With(node)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        values = self.value(node.iter)
        self.bind(node.target, Instance(values.cls) if isinstance(values, ListOf) else None)
        for statement in [*node.body, *node.orelse]:
            self.visit(statement)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> None:
        self.visit_For(node)


@dataclasses.dataclass(frozen=True)
class _Method:
    """A method read from an instance: called without its ``self``."""

    function: Any
    name: str  # Runtime.start, not the mixin's Starting.start


def _api_problems(block: Block, tree: ast.Module, *, partial: bool = False) -> list[str]:
    checker = Checker(block, partial=partial)
    checker.visit(tree)
    return checker.problems


def _import_problems(block: Block, tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("herder"):
            where = f"{block.page.relative_to(ROOT)}:{block.line + node.lineno}"
            module = importlib.import_module(node.module or "")
            public = getattr(module, "__all__", [n for n in dir(module) if n[0] != "_"])
            for alias in node.names:
                if not hasattr(module, alias.name):
                    yield f"{where}: {node.module} has no {alias.name}"
                elif alias.name not in public:
                    yield f"{where}: {alias.name} is not public in {node.module}"


@pytest.mark.parametrize("block", PYTHON, ids=str)
def test_a_python_block_compiles_and_uses_herder_as_it_is(block: Block) -> None:
    tree = compile(block.code, str(block), "exec", ast.PyCF_ONLY_AST)
    assert [*_import_problems(block, tree), *_api_problems(block, tree)] == []


RUNNABLE = [b for b in PYTHON if not b.fragment]


@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_a_block_that_is_no_fragment_runs(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # examples open var/herder relative to the cwd
    exec(compile(block.code, str(block), "exec"), {"__name__": "__main__"})


def test_code_in_the_text_uses_herder_as_it_is() -> None:
    """`Runtime(path, lease=5.0)`, `rt.handoff(deadline=30.0)`, ... in the prose: the
    same checks, except that required arguments may be left out (`rt.schedule()`)."""
    problems, checked = [], 0
    for page in PAGES:
        for line, span in spans(page.read_text()):
            try:
                tree = ast.parse(span)
            except SyntaxError:
                continue  # a command, a path, `Workflow(..., deadline=)`
            checked += 1
            block = Block(page, line - 1, span, fragment=True)
            problems += [*_import_problems(block, tree), *_api_problems(block, tree, partial=True)]
    assert problems == []
    assert checked > 500  # the search still finds the spans


def test_the_readme_usage_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    usage = next(b for b in PYTHON if b.page.name == "README.md" and not b.fragment)
    monkeypatch.chdir(tmp_path)
    exec(compile(usage.code, str(usage), "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "order-42"
    assert printed[1] == "{'flight': {'pnr': 'X1'}, 'hotel': {'room': 12, 'flight': 'X1'}}"
    assert printed[2:] == ["SUCCEEDED", "[]"]


def test_the_checks_find_what_they_are_for() -> None:
    """The checker itself: each kind of mistake a renamed API leaves in a doc is found."""
    wrong = Block(ROOT / "README.md", 0, "", fragment=True)
    code = """\
from herder.runtime import Runtime, Gone, _config
from herder.runtime.testing import FakeClock
h = rt.start("trip", {}, prio=1)
h.result(wait=1)
rt.add_agent("a", object, concurrency=1, limit=2)
Runtime("var/herder", sweep=0.1)
ctx.idempotence_key
for item in rt.inbox():
    item.stepname
FakeClock().rewind(1)
a = await rt.start_async("trip")
a.result_async(wait_for=1)
"""
    tree = ast.parse(code)
    assert [p.split(": ", 1)[1] for p in _import_problems(wrong, tree)] == [
        "herder.runtime has no Gone",
        "_config is not public in herder.runtime",
    ]
    found = _api_problems(wrong, tree)
    assert len(found) == 8, found
    wrong_names = ("prio", "wait", "limit", "'sweep'", "idempotence_key", "stepname", "rewind")
    for expected in (*wrong_names, "wait_for"):
        assert any(expected in p for p in found), (expected, found)
    prose = ast.parse("rt.schedule()\nRuntime(lease=5.0)\nrt.handoff(deadline=1, wait=2)")
    assert [p.split(": ", 1)[1] for p in _api_problems(wrong, prose, partial=True)] == [
        "Runtime.handoff(): got an unexpected keyword argument 'wait'"
    ]
