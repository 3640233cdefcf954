"""A lint over the test files themselves: asserts that cannot fail and exception checks so wide that
they hide the wrong failure (findings of issue 35)."""
import ast
import importlib
import inspect
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def imported_callables(tree: ast.Module) -> set[str]:
    """Names imported in the file that are a module, a class or a function (an assert of one is always true)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            try:
                module = importlib.import_module(node.module)
            except ImportError:  # a test's optional dependency: its names are not judged
                continue
            for a in node.names:
                obj = vars(module).get(a.name)
                if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj):
                    out.add(a.asname or a.name)
    return out


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    always_true = defined | imported_callables(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Name) and node.test.id in always_true:
            out.append((node.lineno, f"`assert {node.test.id}` asserts a function, class or module, which is always true"))
        if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Tuple):
            out.append((node.lineno, "`except (...)` with several exception types: name the one expected refusal"))
        if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
                and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "raises"
                and node.args and isinstance(node.args[0], ast.Tuple)):
            out.append((node.lineno, "`pytest.raises((...))` with several exception types: name the one expected refusal"))
    return [f"{path.name}:{line}: {what}" for line, what in sorted(out)]


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_assert_that_cannot_fail_and_no_catch_all_exception_tuple(path):
    assert findings(path) == []


def test_the_lint_finds_what_it_is_for(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("import os\nfrom pathlib import Path\nimport pytest\n\ndef helper():\n    pass\n\n"
                   "def test_x():\n    assert helper\n    assert Path\n    assert os\n    ok = 1\n    assert ok\n"
                   "    try:\n        helper()\n    except (ValueError, KeyError):\n        pass\n"
                   "    with pytest.raises((ValueError, TypeError)):\n        helper()\n"
                   "    with pytest.raises(ValueError):\n        helper()\n")
    assert [f.split(": ", 1)[0] for f in findings(bad)] == [
        "test_bad.py:9", "test_bad.py:10", "test_bad.py:11", "test_bad.py:16", "test_bad.py:18"]
