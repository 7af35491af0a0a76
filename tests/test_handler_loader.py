"""Handler resolution (COMPAT section 2) and the ``ts.*`` import alias."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from dagserve.engine.handler import ts_alias
from dagserve.engine.handler.context import Context
from dagserve.engine.handler.loader import load_handler, split_handler
from dagserve.engine.handler.service import ServiceConfig, load_service
from dagserve.engine.handler.util import PredictionException
from dagserve.engine.messages import Param, Request


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    ts_alias.install()


def model_dir_with(tmp_path: Path, files: dict[str, str]) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (model_dir / name).write_text(textwrap.dedent(text))
    return model_dir


def context_for(model_dir: Path) -> Context:
    return Context("m", str(model_dir), {"model": {"modelName": "m"}}, 1, None, "test")


@pytest.mark.parametrize("handler, expected", [
    ("my_handler", ("my_handler", None)),
    ("my_handler.py", ("my_handler", None)),
    ("my_handler:handle", ("my_handler", "handle")),
    ("wf_handler.py:pre_processing", ("wf_handler", "pre_processing")),
    ("handlers/sub/my_handler.py:f", ("my_handler", "f")),
    ("image_classifier", ("image_classifier", None)),
])
def test_split_handler(handler, expected):
    assert split_handler(handler) == expected


@pytest.mark.parametrize("handler", ["", "  ", ".py", "mod:"])
def test_split_handler_rejects_empty_parts(handler):
    with pytest.raises(ValueError):
        split_handler(handler)


def test_function_handler_is_called_once_with_none_at_load(tmp_path):
    model_dir = model_dir_with(tmp_path, {"fh.py": """
        CALLS = []
        def handle(data, context):
            CALLS.append(data)
            return None if data is None else [len(CALLS)] * len(data)
    """})
    context = context_for(model_dir)
    entry = load_handler("fh.py", model_dir, context)
    module = sys.modules["fh"]
    assert module.CALLS == [None]
    assert entry([{"body": b"x"}], context) == [2]
    assert module.CALLS == [None, [{"body": b"x"}]]
    assert sys.path[0] == str(model_dir.resolve())


def test_named_function_handler(tmp_path):
    model_dir = model_dir_with(tmp_path, {"wf_handler.py": """
        def pre_processing(data, context):
            return None if data is None else ["pre"] * len(data)
        def post_processing(data, context):
            return None if data is None else ["post"] * len(data)
    """})
    context = context_for(model_dir)
    assert load_handler("wf_handler:post_processing", model_dir, context)([{}], context) == ["post"]
    pre = load_handler("wf_handler.py:pre_processing", model_dir, context)
    assert pre([{}], context) == ["pre"]


def test_missing_named_function_is_an_error(tmp_path):
    model_dir = model_dir_with(tmp_path, {"wf2.py": "def other(d, c):\n    return d\n"})
    with pytest.raises(AttributeError, match="has no function 'missing'"):
        load_handler("wf2:missing", model_dir, context_for(model_dir))


def test_class_handler_is_built_and_initialized(tmp_path):
    model_dir = model_dir_with(tmp_path, {"ch.py": """
        from collections import OrderedDict  # an imported class does not count

        class MyHandler:
            def __init__(self):
                self.ctx = None
            def initialize(self, context):
                self.ctx = context
            def handle(self, data, context):
                return [self.ctx is context] * len(data)
    """})
    context = context_for(model_dir)
    entry = load_handler("ch", model_dir, context)
    assert entry([{}, {}], context) == [True, True]


def test_module_with_two_classes_and_no_handle_is_an_error(tmp_path):
    model_dir = model_dir_with(tmp_path, {"two.py": """
        class A:
            def handle(self, data, context): return data
        class B:
            pass
    """})
    with pytest.raises(ValueError, match=r"exactly one class, found 2 classes \(A, B\)"):
        load_handler("two.py", model_dir, context_for(model_dir))


def test_class_without_handle_is_an_error(tmp_path):
    model_dir = model_dir_with(tmp_path, {"nohandle.py": "class X:\n    pass\n"})
    with pytest.raises(TypeError, match="has no handle"):
        load_handler("nohandle", model_dir, context_for(model_dir))


def test_unknown_handler_names_the_built_ins(tmp_path):
    model_dir = model_dir_with(tmp_path, {})
    with pytest.raises(ImportError, match="no such_handler.py in the model directory and no "
                                          "built-in handler"):
        load_handler("such_handler", model_dir, context_for(model_dir))


def test_import_error_inside_the_handler_file_is_not_masked(tmp_path):
    model_dir = model_dir_with(tmp_path, {"image_classifier.py": "import no_such_dependency_x\n"})
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_x"):
        load_handler("image_classifier", model_dir, context_for(model_dir))


def test_model_dir_file_wins_over_the_built_in(tmp_path):
    model_dir = model_dir_with(tmp_path, {"base_handler.py": """
        def handle(data, context):
            return None if data is None else ["mine"] * len(data)
    """})
    context = context_for(model_dir)
    assert load_handler("base_handler", model_dir, context)([{}], context) == ["mine"]
    del sys.modules["base_handler"]


def test_built_in_handler_is_used_when_the_archive_has_none(tmp_path):
    model_dir = model_dir_with(tmp_path, {})
    context = context_for(model_dir)
    with pytest.raises(RuntimeError, match="No model weights could be loaded"):
        load_handler("base_handler", model_dir, context)  # resolved, then fails to load


def test_file_shadowing_a_module_in_use_is_refused(tmp_path):
    model_dir = model_dir_with(tmp_path, {"json.py": "def handle(d, c):\n    return d\n"})
    with pytest.raises(ImportError, match="same name as the module 'json'"):
        load_handler("json.py", model_dir, context_for(model_dir))
    assert sys.modules["json"] is json


def test_same_file_name_in_two_model_dirs_loads_each(tmp_path):
    results = []
    for n in (1, 2):
        model_dir = model_dir_with(tmp_path / str(n), {"same.py": f"""
            def handle(data, context):
                return None if data is None else [{n}] * len(data)
        """})
        context = context_for(model_dir)
        results.append(load_handler("same", model_dir, context)([{}], context))
    assert results == [[1], [2]]


# -- ts.* alias ---------------------------------------------------------------------------

TS_HANDLER = """
    from ts.context import Context
    from ts.torch_handler.base_handler import BaseHandler
    from ts.utils.util import PredictionException, map_class_to_label
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_type_enum import MetricTypes
    import ts

    class TsStyleHandler(BaseHandler):
        def initialize(self, context):
            assert isinstance(context, Context)
            self.context = context
            self.initialized = True

        def handle(self, data, context):
            metric = context.metrics.add_metric_to_cache("Calls", "count", ["Who"],
                                                         MetricTypes.COUNTER)
            metric.add_or_update(1, ["ts"])
            context.metrics.add_metric("Custom", 2, "count", None, [Dimension("D", "x")])
            if data[0].get("body") == "fail":
                raise PredictionException("refused by handler", 418)
            return [{"version": ts.__version__,
                     "labels": map_class_to_label([[0.9]], {"0": "zero"})} for _ in data]
"""


def test_torchserve_style_handler_runs_unchanged(tmp_path):
    model_dir = model_dir_with(tmp_path, {"ts_style.py": TS_HANDLER})
    service = load_service(ServiceConfig(model_dir, "m", "ts_style.py"))
    resps, metrics = service.predict([Request("a", [Param("body", "text/plain", b"hi")])])
    assert resps[0].code == 200
    assert json.loads(resps[0].value) == {"version": "0.12.0", "labels": [{"zero": 0.9}]}
    dims = {m["name"]: m["dims"] for m in metrics}
    assert dims["Calls"] == {"Who": "ts", "ModelName": "m", "Level": "Model"}
    assert dims["Custom"]["D"] == "x"
    resps, _ = service.predict([Request("b", [Param("body", "text/plain", b"fail")])])
    assert (resps[0].code, resps[0].message) == (418, "refused by handler")


def test_ts_modules_are_dagserve_modules():
    import dagserve.engine.handler.base_handler as base_handler
    import dagserve.engine.handler.context as context
    import dagserve.engine.handler.util as util
    import ts.context
    import ts.torch_handler.base_handler
    import ts.utils.util
    from ts.torch_handler.image_classifier import ImageClassifier

    assert ts.context is context
    assert ts.torch_handler.base_handler is base_handler
    assert ts.utils.util.PredictionException is PredictionException is util.PredictionException
    assert issubclass(ImageClassifier, base_handler.BaseHandler)
    # the shared modules keep their own identity
    assert context.__spec__.name == "dagserve.engine.handler.context"
    assert context.__name__ == "dagserve.engine.handler.context"


def test_unknown_ts_module_lists_what_is_provided():
    with pytest.raises(ImportError, match="dagserve provides these TorchServe modules: "
                                          "ts.context"):
        import ts.model_service_worker  # noqa: F401


def test_install_is_idempotent_and_first():
    ts_alias.install()
    ts_alias.install()
    finders = [f for f in sys.meta_path if isinstance(f, ts_alias.TsAliasFinder)]
    assert len(finders) == 1 and sys.meta_path[0] is finders[0]
    import ts.context
    assert ts.context is sys.modules["dagserve.engine.handler.context"]


def test_install_drops_foreign_ts_modules(monkeypatch):
    import types

    fake = types.ModuleType("ts.context")
    monkeypatch.setitem(sys.modules, "ts.context", fake)
    ts_alias.install()
    import ts.context
    assert ts.context is not fake


def test_alias_wins_over_an_installed_ts_package(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "ts"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "context.py").write_text("Context = 'the real torchserve'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ts_alias.uninstall()
    import ts.context

    assert ts.context.Context == "the real torchserve"  # the stand-in is importable
    ts_alias.install()
    from ts.context import Context as TsContext

    assert TsContext is Context


def test_a_bare_folder_named_like_a_builtin_does_not_hide_it(tmp_path, monkeypatch):
    """A namespace package on sys.path (e.g. examples/image_classifier/) is not a handler."""
    import sys

    from dagserve.engine.handler import loader

    (tmp_path / "elsewhere" / "image_classifier").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    sys.modules.pop("image_classifier", None)
    module = loader._import_handler_module("image_classifier", tmp_path)
    assert module.__name__ == "dagserve.engine.handler.image_classifier"
    sys.modules.pop("image_classifier", None)
