"""The grammar of a handler string, shared by the archiver, the server and the worker.

``[dir/]module[.py][:function]`` (TorchServe's): the module is the file's base name without
``.py``; the function defaults to the module's ``handle`` (or its one class). A bare name in
:data:`BUILTIN_HANDLERS` means dagserve's built-in handler when the model brings no file of
that name.
"""

from __future__ import annotations

from dataclasses import dataclass

BUILTIN_HANDLERS = ("base_handler", "image_classifier", "image_segmenter", "object_detector",
                    "text_classifier")


@dataclass(frozen=True, slots=True)
class HandlerName:
    path: str  # the part before ':' as written, e.g. "dir/my_handler.py"
    module: str  # "my_handler"
    function: str | None  # None: the default entry point

    @property
    def file_name(self) -> str:
        return self.module + ".py"


def parse_handler(handler: str) -> HandlerName:
    """Split a handler string; ValueError says what is wrong with it."""
    if not isinstance(handler, str) or not handler.strip():
        raise ValueError("the model has no handler (the manifest's model.handler is empty)")
    path, sep, function = handler.strip().partition(":")
    module = path.replace("\\", "/").rsplit("/", 1)[-1]
    if module.endswith(".py"):
        module = module[:-3]
    if not module:
        raise ValueError(f"handler {handler!r} names no module")
    if sep and not function:
        raise ValueError(f"handler {handler!r} has an empty function name after ':'")
    if sep and not function.isidentifier():
        raise ValueError(f"handler {handler!r}: {function!r} is not a function name")
    return HandlerName(path, module, function or None)
