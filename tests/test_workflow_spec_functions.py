"""Function nodes against a workflow handler file (dagserve.workflows.functions)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dagserve.workflows import SpecError, check_functions, list_module_functions, load_spec

HANDLER = textwrap.dedent('''
    import json
    import os.path as osp
    from functools import partial
    from json import dumps as to_json, loads

    MARKER = __file__ + ".ran"
    open(MARKER, "w").close()  # proves the file was executed, if it ever is

    def pre_processing(data, context):
        def helper():  # nested: not a node function
            pass
        return data

    async def post_processing(data, context):
        return data

    aggregate = partial(pre_processing)
    first, (second, third) = 1, (2, 3)
    typed: int = 3
    declared_only: int

    try:
        from fast import speedup
    except ImportError:
        def speedup(data, context):
            return data

    if os.environ.get("X"):
        def maybe(data, context):
            return data

    class Helper:
        def method(self):
            pass
''')


def test_lists_top_level_functions_without_importing(tmp_path: Path) -> None:
    path = tmp_path / "workflow_handler.py"
    path.write_text(HANDLER, encoding="utf-8")
    names = list_module_functions(path)
    assert names == {"MARKER", "pre_processing", "post_processing", "aggregate", "first",
                     "second", "third", "typed", "speedup", "maybe", "partial", "to_json",
                     "loads"}
    assert not (tmp_path / "workflow_handler.py.ran").exists()
    assert list_module_functions(str(path)) == names


def test_handler_syntax_error_is_located(tmp_path: Path) -> None:
    path = tmp_path / "h.py"
    path.write_text("def ok(data, context):\n    return data\n\ndef broken(:\n    pass\n")
    with pytest.raises(SpecError) as info:
        list_module_functions(path)
    problem = info.value.problems[0]
    assert problem.line == 4 and "syntax error" in problem.message
    assert str(info.value).startswith(f"{path}:4:")


def test_missing_handler_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="handler file cannot be read: not found"):
        list_module_functions(tmp_path / "absent.py")


SPEC = """models:
  m1: {url: m1.mar}
dag:
  pre_processing: [m1]
  m1: [post_processing, aggregate]
"""


def test_check_functions_passes_when_all_are_defined() -> None:
    wf = load_spec(SPEC)
    assert check_functions(wf, {"pre_processing", "post_processing", "aggregate", "x"}) is None


def test_check_functions_names_each_missing_function_at_its_line() -> None:
    wf = load_spec(SPEC, source="wf.yaml")
    with pytest.raises(SpecError) as info:
        check_functions(wf, {"pre_processing", "postprocessing"})
    found = info.value.problems
    assert [(p.line, p.col, p.node) for p in found] == [(5, 8, "post_processing"),
                                                        (5, 25, "aggregate")]
    assert found[0].message == ("function 'post_processing' is not defined in the workflow's "
                                "handler file (did you mean 'postprocessing'?)")
    assert str(info.value).splitlines()[1] == (
        "wf.yaml:5:25: node 'aggregate': function 'aggregate' is not defined in the "
        "workflow's handler file")


def test_check_functions_with_a_real_handler_file(tmp_path: Path) -> None:
    path = tmp_path / "handler.py"
    path.write_text(HANDLER, encoding="utf-8")
    wf = load_spec(SPEC)
    check_functions(wf, list_module_functions(path))
    wf_missing = load_spec(SPEC.replace("aggregate", "summarize"))
    with pytest.raises(SpecError, match="function 'summarize' is not defined"):
        check_functions(wf_missing, list_module_functions(path))
