"""The spec's keys beyond TorchServe (nodes:, model:, workflow:): each check a refusal at
its exact line:col with the node, all problems at once, through load_spec and through
workflow-archiver; a valid spec compiles its expressions once."""
from __future__ import annotations

import subprocess
import sys

import pytest

from dagserve.workflows import SpecError, load_spec

BASE = """\
models:
  detector:
    url: detector.mar
  classifier:
    model: shapes
dag:
  pre: [detector, router]
  detector: [classifier]
  classifier: [summarize]
  router: [breed]
"""


def problems(extra: str, base: str = BASE) -> list[tuple[int | None, int | None, str | None, str]]:
    with pytest.raises(SpecError) as info:
        load_spec(base + extra, source="spec.yaml")
    return [(p.line, p.col, p.node, p.message) for p in info.value.problems]


def test_a_valid_spec_compiles_every_key():
    compiled = load_spec(BASE + """\
nodes:
  classifier:
    foreach: "boxes[*].crop"
    max-items: 64
  breed:
    when: "label == 'dog' && score > `0.6`"
  summarize:
    inputs:
      image: $request
      labels: classifier
      boxes: {from: detector, select: "boxes[*].xy"}
    on-error: {default: []}
workflow:
  deadline-ms: 2000
""")
    assert compiled.uses_flow
    assert compiled.shared == {"classifier": "shapes"}
    assert "classifier" not in compiled.models and compiled.kind("classifier") == "shared"
    assert compiled.deadline_ms == 2000
    breed = compiled.flows["breed"]
    assert breed.when.test({"label": "dog", "score": 0.7})
    assert not breed.when.test({"label": "cat", "score": 0.9})
    assert compiled.flows["classifier"].foreach.search({"boxes": [{"crop": 1}]}) == [1]
    summary = compiled.flows["summarize"]
    assert [(e.name, e.source) for e in summary.inputs] == [
        ("image", "$request"), ("labels", "classifier"), ("boxes", "detector")]
    assert (summary.on_error, summary.default) == ("default", [])
    described = compiled.to_json()
    assert described["conditions"] == {"breed": "label == 'dog' && score > `0.6`"}
    assert described["conditionalEdges"] == [["router", "breed"]]
    assert described["inputsEdges"] == [["$request", "summarize", "image"],
                                        ["classifier", "summarize", "labels"],
                                        ["detector", "summarize", "boxes"]]
    assert described["sharedModels"] == {"classifier": "shapes"}


def test_a_torchserve_spec_does_not_use_the_general_path():
    assert not load_spec(BASE.replace("model: shapes", "url: shapes.mar")).uses_flow


def test_jmespath_syntax_error_points_into_the_expression():
    found = problems('nodes:\n  breed:\n    when: "label == \'dog\' && score > `0.6"\n')
    assert len(found) == 1
    line, col, node, message = found[0]
    # line 13 is the when; the value's quote is at col 11, the unclosed backquote 26 later
    assert (line, col, node) == (13, 38, "breed")
    assert "JMESPath" in message and "unclosed `" in message


def test_every_new_check_at_once_with_its_place():
    found = problems("""\
nodes:
  pre:
    when: "x"
    foreach: "items"
  breed:
    colour: red
    max-items: 3
  summarize:
    inputs:
      other: router
      bad: {from: detector, select: "boxes[*]."}
  ghost:
    on-error: skip
""", base=BASE.replace("model: shapes", "model: shapes\n    batch-size: 4"))
    places = [(line, col, node) for line, col, node, _ in found]
    assert places == [
        (6, 5, "classifier"),   # batch-size on a shared model
        (14, 5, "pre"),         # when on the start node
        (15, 5, "pre"),         # foreach on the start node's raw body
        (17, 5, "breed"),       # unknown key under nodes:
        (18, 5, "breed"),       # max-items without foreach
        (21, 7, "summarize"),   # inputs naming a node that is not an ancestor
        (22, 47, "summarize"),  # select syntax error: where the expression ends
        (23, 3, "ghost"),       # not a node of the dag
    ]
    messages = [m for *_, m in found]
    assert "cannot be set on a shared model" in messages[0]
    assert "colour" in messages[3]
    assert "not an ancestor" in messages[5] and "router" in messages[5]


def test_bad_values_of_the_new_keys():
    found = problems("""\
nodes:
  breed:
    when: 3
    on-error: retry
  summarize:
    inputs: {a: {from: detector}}
workflow:
  deadline-ms: 0
  budget: 1
""")
    where = [(line, col, node) for line, col, node, _ in found]
    assert where == [(13, 5, "breed"),        # when is not a string
                     (14, 5, "breed"),        # on-error value
                     (16, 14, "summarize"),   # inputs entry without select
                     (18, 3, None),           # deadline-ms
                     (19, 3, None)]           # unknown key under workflow:


def test_url_and_model_together_and_neither():
    found = problems("", base=BASE.replace("model: shapes", "model: shapes\n    url: x.mar")
                     .replace("    url: detector.mar\n", "    batch-size: 2\n"))
    messages = {node: m for _, _, node, m in found}
    assert "not both" in messages["classifier"]
    assert "no url" in messages["detector"]


def test_foreach_with_inputs_is_refused():
    found = problems('nodes:\n  classifier:\n    foreach: "boxes"\n    inputs: {a: $request}\n')
    assert [(line, node) for line, _, node, _ in found] == [(14, "classifier")]


def test_workflow_archiver_refuses_a_bad_expression(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE + 'nodes:\n  breed:\n    when: "a =="\n')
    handler = tmp_path / "handler.py"
    handler.write_text("def pre(data, context):\n    return data\n\n"
                       "def router(data, context):\n    return data\n\n"
                       "def breed(data, context):\n    return data\n\n"
                       "def summarize(data, context):\n    return data\n")
    result = subprocess.run([sys.executable, "-m", "dagserve.archiver.workflow_cli",
                             "--workflow-name", "bad", "--spec-file", str(spec), "--handler",
                             str(handler), "--export-path", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "spec.yaml:13:" in result.stderr and "node 'breed'" in result.stderr
    assert "JMESPath" in result.stderr
    assert not (tmp_path / "bad.war").exists()


@pytest.mark.parametrize("written, col", [
    ("when: label == `1", 11 + 9),          # plain: the backquote at offset 9
    ("when: 'label == `1'", 11 + 1 + 9),     # single-quoted: one more for the quote
])
def test_the_column_counts_the_quote(written, col):
    found = problems(f"nodes:\n  breed:\n    {written}\n")
    assert [(line, c) for line, c, _, _ in found] == [(13, col)]


def test_a_block_scalar_error_stays_at_the_scalar_with_its_column_in_the_message():
    found = problems("nodes:\n  breed:\n    when: |\n      label ==\n")
    (line, col, node, message), = found
    assert (line, node) == (13, "breed") and "ends too early" in message
