"""Valid workflow specs: what compiling them yields (workflows package)."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import networkx as nx
import pytest

from dagserve.workflows import (CompiledWorkflow, ModelSpec, NodeSettings, SpecError, load_spec,
                       load_spec_file, validate_spec_file)


def spec(text: str) -> str:
    """Spec text with its first line right after the opening quotes (so line numbers are exact)."""
    return text.lstrip("\n")


TORCHSERVE_EXAMPLE = spec("""
models:
    min-workers: 1
    max-workers: 4
    batch-size: 3
    max-batch-delay: 5000
    retry-attempts: 3
    timeout-ms: 5000
    m1:
       url: model1.mar
    m2:
       url: model2.mar
       batch-size: 8
dag:
  pre_processing: [m1]
  m1: [m2]
  m2: [post_processing]
""")

DEFAULTS = NodeSettings(min_workers=1, max_workers=1, batch_size=1, max_batch_delay_ms=50,
                        retry_attempts=1, timeout_ms=10000)


def test_torchserve_example_compiles_to_a_chain() -> None:
    wf = load_spec(TORCHSERVE_EXAMPLE, name="wf")
    assert isinstance(wf, CompiledWorkflow)
    assert wf.name == "wf"
    glob = NodeSettings(min_workers=1, max_workers=4, batch_size=3, max_batch_delay_ms=5000,
                        retry_attempts=3, timeout_ms=5000)
    assert wf.global_settings == glob
    assert wf.start == "pre_processing"
    assert wf.leaves == ["post_processing"]
    assert wf.topo_order == ["pre_processing", "m1", "m2", "post_processing"]
    assert wf.functions == ["pre_processing", "post_processing"]
    assert wf.parents == {"pre_processing": [], "m1": ["pre_processing"], "m2": ["m1"],
                          "post_processing": ["m2"]}
    assert wf.children["m1"] == ["m2"] and wf.children["post_processing"] == []
    assert wf.edges == [("pre_processing", "m1"), ("m1", "m2"), ("m2", "post_processing")]
    assert wf.warnings == []

    g = wf.graph
    assert isinstance(g, nx.DiGraph)
    assert set(g.edges) == {("pre_processing", "m1"), ("m1", "m2"), ("m2", "post_processing")}
    assert g.nodes["m1"]["kind"] == "model" and g.nodes["m1"]["url"] == "model1.mar"
    assert g.nodes["m1"]["settings"] == glob
    assert g.nodes["m2"]["settings"].batch_size == 8
    assert g.nodes["m2"]["settings"].max_workers == 4  # the other globals still apply
    assert g.nodes["pre_processing"]["kind"] == "function"
    assert g.nodes["pre_processing"]["settings"] == glob
    assert g.nodes["pre_processing"]["url"] is None
    assert g.nodes["m2"]["line"] == 15  # first appearance: as a child in 'm1: [m2]'

    assert wf.models == {
        "m1": ModelSpec("m1", "model1.mar", glob, {}, line=8),
        "m2": ModelSpec("m2", "model2.mar",
                        NodeSettings(1, 4, 8, 5000, 3, 5000), {"batch-size": 8}, line=10),
    }


def test_to_json_describes_nodes_edges_start_and_leaves() -> None:
    described = load_spec(TORCHSERVE_EXAMPLE, name="wf").to_json()
    assert json.loads(json.dumps(described)) == described
    assert described["name"] == "wf"
    assert described["start"] == "pre_processing"
    assert described["leaves"] == ["post_processing"]
    assert list(described["nodes"]) == ["pre_processing", "m1", "m2", "post_processing"]
    assert described["nodes"]["m2"] == {
        "kind": "model", "url": "model2.mar",
        "settings": {"minWorkers": 1, "maxWorkers": 4, "batchSize": 8, "maxBatchDelay": 5000,
                     "retryAttempts": 3, "timeoutMs": 5000},
    }
    assert described["nodes"]["pre_processing"]["kind"] == "function"
    assert "url" not in described["nodes"]["pre_processing"]
    assert described["edges"] == [["pre_processing", "m1"], ["m1", "m2"],
                                  ["m2", "post_processing"]]
    assert described["globalSettings"]["maxBatchDelay"] == 5000


def test_defaults_without_any_global() -> None:
    wf = load_spec("models:\n  m1: {url: a.mar}\ndag:\n  m1: []\n")
    assert wf.global_settings == DEFAULTS
    assert wf.graph.nodes["m1"]["settings"] == DEFAULTS
    assert wf.start == "m1" and wf.leaves == ["m1"] and wf.functions == []


@pytest.mark.parametrize("dag", ["dag: {m1: []}\n", "dag:\n  m1:\n"])
def test_single_node_dag(dag: str) -> None:
    wf = load_spec("models:\n  m1: {url: a.mar}\n" + dag)
    assert list(wf.graph.nodes) == ["m1"]
    assert wf.start == "m1" and wf.leaves == ["m1"] and wf.topo_order == ["m1"]
    assert wf.parents == {"m1": []} and wf.children == {"m1": []}


def test_diamond_keeps_parent_order_of_declaration() -> None:
    wf = load_spec(spec("""
models:
  left: {url: left.mar}
  right: {url: right.mar}
dag:
  split: [right, left]
  left: [join]
  right: [join]
"""))
    assert wf.start == "split"
    assert wf.children["split"] == ["right", "left"]
    assert wf.parents["join"] == ["left", "right"]  # edges declared left->join first
    assert wf.topo_order == ["split", "right", "left", "join"]
    assert wf.leaves == ["join"]
    assert wf.functions == ["split", "join"]


def test_two_leaves_in_order_of_first_appearance() -> None:
    wf = load_spec(spec("""
models:
  m1: {url: m1.mar}
  m2: {url: m2.mar}
  m3: {url: m3.mar}
dag:
  m1: [m3, m2]
  m2: []
"""))
    assert wf.leaves == ["m3", "m2"]
    assert wf.start == "m1"
    assert [wf.graph.nodes[n]["kind"] for n in wf.topo_order] == ["model"] * 3


def test_function_only_workflow() -> None:
    wf = load_spec(spec("""
models:
  batch-size: 4
dag:
  pre: [infer]
  infer: [post]
"""))
    assert wf.models == {}
    assert wf.functions == ["pre", "infer", "post"]
    assert all(wf.graph.nodes[n]["kind"] == "function" for n in wf.graph)
    assert wf.graph.nodes["infer"]["settings"].batch_size == 4


@pytest.mark.parametrize("models", ["models: {}\n", "models:\n"])
def test_empty_models_section_is_allowed(models: str) -> None:
    wf = load_spec(models + "dag:\n  f: [g]\n")
    assert wf.functions == ["f", "g"] and wf.global_settings == DEFAULTS


def test_globals_written_after_the_models_still_apply() -> None:
    wf = load_spec(spec("""
models:
  m1:
    url: m1.mar
    timeout-ms: 200
  batch-size: 16
  timeout-ms: 3000
dag:
  m1: [post]
"""))
    assert wf.graph.nodes["m1"]["settings"].batch_size == 16
    assert wf.graph.nodes["m1"]["settings"].timeout_ms == 200  # the override wins
    assert wf.graph.nodes["post"]["settings"].timeout_ms == 3000


def test_min_workers_is_honoured_and_raises_an_unset_max() -> None:
    wf = load_spec(spec("""
models:
  min-workers: 3
  m1: {url: m1.mar}
  m2: {url: m2.mar, max-workers: 5}
  m3: {url: m3.mar, min-workers: 2, max-workers: 2}
dag:
  m1: [m2, m3]
"""))
    s1, s2, s3 = (wf.graph.nodes[m]["settings"] for m in ("m1", "m2", "m3"))
    assert (s1.min_workers, s1.max_workers) == (3, 3)
    assert (s2.min_workers, s2.max_workers) == (3, 5)
    assert (s3.min_workers, s3.max_workers) == (2, 2)
    assert (wf.global_settings.min_workers, wf.global_settings.max_workers) == (3, 3)


def test_duplicate_edges_are_merged() -> None:
    wf = load_spec("models:\n  m1: {url: m1.mar}\ndag:\n  pre: [m1, m1, post]\n  m1: [post]\n")
    assert wf.children["pre"] == ["m1", "post"]
    assert wf.parents["post"] == ["pre", "m1"]
    assert wf.graph.number_of_edges() == 3


def test_unused_model_is_a_warning_and_not_loaded() -> None:
    wf = load_spec("models:\n  m1: {url: a.mar}\n  spare: {url: b.mar}\ndag:\n  m1: []\n",
                   source="wf.yaml")
    assert list(wf.models) == ["m1"]
    assert wf.warnings == ["wf.yaml:3:3: model 'spare' is declared but not used in 'dag:'; "
                           "it will not be loaded"]


def test_unknown_top_level_key_is_a_warning() -> None:
    wf = load_spec("models: {}\ndag: {f: []}\nversion: 2\n")
    assert len(wf.warnings) == 1 and "3:1: unknown top-level key 'version'" in wf.warnings[0]


def test_yaml_merge_keys_and_integral_floats() -> None:
    wf = load_spec(spec("""
models:
  m1: &common {url: a.mar, batch-size: 4.0, timeout-ms: 100}
  m2:
    <<: *common
    url: b.mar
dag:
  m1: [m2]
"""))
    assert wf.models["m2"].url == "b.mar"
    assert wf.models["m2"].settings.batch_size == 4
    assert isinstance(wf.models["m1"].settings.batch_size, int)
    assert wf.models["m2"].settings.timeout_ms == 100


def test_numeric_looking_names_work_when_quoted() -> None:
    wf = load_spec("models:\n  '18': {url: r18.mar}\ndag:\n  '18': [post]\n")
    assert wf.graph.nodes["18"]["kind"] == "model"


def test_load_spec_file_names_the_workflow_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my_flow.yaml"
    path.write_text(TORCHSERVE_EXAMPLE, encoding="utf-8")
    wf = load_spec_file(path)
    assert wf.name == "my_flow" and wf.source == str(path)
    assert load_spec_file(str(path), name="other").name == "other"
    assert validate_spec_file(path) is None


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + TORCHSERVE_EXAMPLE.encode())
    assert load_spec_file(path).start == "pre_processing"


def test_validate_spec_file_reports_problems_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("models:\n  m1: {url: a.mar, batch-size: eight}\ndag: {m1: []}\n")
    with pytest.raises(SpecError) as info:
        validate_spec_file(path)
    assert str(info.value) == (f"{path}:2:20: node 'm1': batch-size must be an integer >= 1, "
                               "got 'eight'")


def test_schema_ships_with_the_package_and_is_draft_2020_12() -> None:
    text = resources.files("workflows").joinpath("schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = {"models": {"batch-size": 2, "m1": {"url": "a.mar"}}, "dag": {"m1": None}}
    assert list(validator.iter_errors(good)) == []
    bad = {"models": {"m1": {"url": 1, "x": 2}}, "dag": {"m1": "m2"}}
    assert len(list(validator.iter_errors(bad))) == 3
