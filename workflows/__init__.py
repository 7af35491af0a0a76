"""The workflow spec layer: TorchServe's ``models:``/``dag:`` YAML, validated and compiled.

``load_spec`` / ``load_spec_file`` return a CompiledWorkflow (a networkx DiGraph with each
node's kind, settings and url) or raise SpecError listing every problem with its line,
column and node. Imports nothing from ``engine`` or ``archiver``.
"""
from .compiled import CompiledWorkflow, ModelSpec, NodeSettings
from .compiler import load_spec, load_spec_file, validate_spec_file
from .errors import Problem, SpecError
from .functions import check_functions, list_module_functions

__all__ = [
    "CompiledWorkflow",
    "ModelSpec",
    "NodeSettings",
    "Problem",
    "SpecError",
    "check_functions",
    "list_module_functions",
    "load_spec",
    "load_spec_file",
    "validate_spec_file",
]
