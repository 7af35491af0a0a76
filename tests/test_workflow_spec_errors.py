"""Invalid workflow specs: every problem reported at once, each at its exact line."""
from __future__ import annotations

from pathlib import Path

import pytest

from dagserve.workflows import Problem, SpecError, load_spec, load_spec_file, validate_spec_file


def spec(text: str) -> str:
    return text.lstrip("\n")


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        load_spec(text, source="spec.yaml")
    return info.value.problems


def where(text: str) -> list[tuple[int | None, int | None, str | None]]:
    return [(p.line, p.col, p.node) for p in problems_of(text)]


MANY_PROBLEMS = spec("""
models:
  batch_size: 3
  max-batch-delay: -5
  m1:
    url: model1.mar
    batch-size: "eight"
    timeout: 3
  m2:
    min-workers: 2.5
  m3: model3.mar
dag:
  pre: [m1, bad-name]
  m1: [m2]
  m2: post
""")


def test_every_problem_is_reported_together_with_its_line() -> None:
    found = problems_of(MANY_PROBLEMS)
    assert [(p.line, p.col, p.node) for p in found] == [
        (2, 3, None),        # batch_size: unknown global
        (3, 3, None),        # max-batch-delay: -5
        (6, 5, "m1"),        # batch-size: "eight"
        (7, 5, "m1"),        # unknown key timeout
        (8, 3, "m2"),        # no url
        (9, 5, "m2"),        # min-workers: 2.5
        (10, 3, None),       # m3: model3.mar (a scalar: unknown global setting)
        (12, 13, "bad-name"),
        (14, 3, "m2"),       # children not a list
    ]
    messages = [p.message for p in found]
    assert messages[0] == "unknown global setting 'batch_size' (did you mean 'batch-size'?)"
    assert messages[1] == "max-batch-delay must be an integer >= 0, got -5"
    assert messages[2] == "batch-size must be an integer >= 1, got 'eight'"
    assert messages[3] == "unknown key 'timeout' in a model (did you mean 'timeout-ms'?)"
    assert messages[4].startswith("model has no url")
    assert messages[5] == "min-workers must be an integer >= 1, got 2.5"
    assert messages[6] == ("unknown global setting 'm3'; a model is written "
                           "'m3: {url: model3.mar}'")
    assert "not a model declared under 'models:' and not a valid Python function name" \
        in messages[7]
    assert messages[8] == "children must be a list of node names, got 'post': write 'm2: [post]'"


def test_str_is_one_line_per_problem_with_file_line_col_and_node() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(MANY_PROBLEMS, source="spec.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 9
    assert lines[2] == "spec.yaml:6:5: node 'm1': batch-size must be an integer >= 1, got 'eight'"
    assert lines[0].startswith("spec.yaml:2:3: unknown global setting")


def test_wrong_types_and_ranges_of_settings() -> None:
    text = spec("""
models:
  min-workers: 0
  max-workers: true
  timeout-ms: 0
  retry-attempts: -1
  m1: {url: 7, batch-size: [1]}
  m2: [url, a.mar]
dag:
  m1: [m2]
""")
    found = problems_of(text)
    assert [(p.line, p.node, p.message) for p in found] == [
        (2, None, "min-workers must be an integer >= 1, got 0"),
        (3, None, "max-workers must be an integer >= 1, got true (a boolean)"),
        (4, None, "timeout-ms must be an integer >= 1, got 0"),
        (5, None, "retry-attempts must be an integer >= 0, got -1"),
        (6, "m1", "url must be a non-empty string (a file name in the model store, or a URL), "
                  "got 7"),
        (6, "m1", "batch-size must be an integer >= 1, got a list"),
        (7, "m2", "a model must be a mapping with a url, got a list"),
    ]


def test_missing_sections() -> None:
    assert [p.message for p in problems_of("dag: {f: []}\n")] == ["missing 'models:' section"]
    assert [p.message for p in problems_of("models: {}\n")] == ["missing 'dag:' section"]
    found = problems_of("\n# only a comment\nModels: {}\n")
    assert [(p.line, p.message) for p in found] == [
        (3, "missing 'models:' section (is 'Models:' meant to be 'models:'?)"),
        (3, "missing 'dag:' section"),
    ]


@pytest.mark.parametrize("text, message", [
    ("", "the spec is empty: it needs 'models:' and 'dag:' sections"),
    ("# nothing\n", "the spec is empty: it needs 'models:' and 'dag:' sections"),
    ("- models\n- dag\n", "a workflow spec must be a YAML mapping with 'models:' and 'dag:' "
                          "sections, got a list"),
    ("just text\n", "a workflow spec must be a YAML mapping with 'models:' and 'dag:' "
                    "sections, got 'just text'"),
    ("models: [m1]\ndag: {m1: []}\n", "'models:' must be a mapping of global settings and "
                                      "models, got a list"),
    ("models: {}\ndag: [a, b]\n", "'dag:' must be a mapping 'node: [children]', got a list"),
    ("models: {}\ndag: {}\n", "'dag:' is empty: it needs at least one node"),
    ("models: {}\ndag:\n", "'dag:' must be a mapping 'node: [children]', got nothing (null)"),
])
def test_malformed_sections(text: str, message: str) -> None:
    assert [p.message for p in problems_of(text)] == [message]


def test_dag_children_must_be_names() -> None:
    text = spec("""
models:
  m1: {url: a.mar}
dag:
  m1: [f, 1.5, [g], '']
  f: {g: h}
""")
    assert [(p.line, p.col, p.node, p.message) for p in problems_of(text)] == [
        (4, 11, "m1", "a child must be a node name, got 1.5: quote the name"),
        (4, 16, "m1", "a child must be a node name, got a list"),
        (4, 21, "m1", "a child's name must not be empty"),
        (5, 3, "f", "children must be a list of node names, got a mapping"),
    ]


def test_node_names_that_cannot_be_functions() -> None:
    text = spec("""
models:
  resnet-18: {url: r.mar}
dag:
  resnet-18: [resnet-81, class]
  class: [post]
""")
    found = problems_of(text)
    assert [(p.line, p.col, p.node) for p in found] == [(4, 15, "resnet-81"), (4, 26, "class")]
    assert found[0].message.endswith("(did you mean model 'resnet-18'?)")


def test_invalid_model_name() -> None:
    found = problems_of("models:\n  m1: {url: a.mar}\n  'bad/name': {url: b.mar}\n"
                        "dag: {m1: []}\n")
    assert [(p.line, p.col) for p in found] == [(3, 3)]
    assert found[0].message.startswith("model name 'bad/name' is not valid")


def test_cycle_is_named_at_the_edge_that_closes_it() -> None:
    text = spec("""
models:
  a: {url: a.mar}
  b: {url: b.mar}
dag:
  start: [a]
  a: [b]
  b: [c]
  c: [a, end]
""")
    found = problems_of(text)
    assert [(p.line, p.col, p.message) for p in found] == [(8, 7, "cycle: a -> b -> c -> a")]
    assert str(SpecError(found, "spec.yaml")) == "spec.yaml:8:7: cycle: a -> b -> c -> a"


def test_two_cycles_are_both_reported() -> None:
    text = spec("""
models: {}
dag:
  s: [a, x]
  a: [b]
  b: [a]
  x: [y]
  y: [z]
  z: [x]
""")
    assert [(p.line, p.message) for p in problems_of(text)] == [
        (5, "cycle: a -> b -> a"),
        (8, "cycle: x -> y -> z -> x"),
    ]


def test_cycle_without_any_start_node_is_reported_once() -> None:
    found = problems_of("models: {}\ndag:\n  a: [b]\n  b: [a]\n")
    assert [(p.line, p.col, p.message) for p in found] == [(4, 7, "cycle: a -> b -> a")]


def test_self_loop() -> None:
    found = problems_of("models:\n  a: {url: a.mar}\ndag:\n  a: [b, a]\n")
    assert [(p.line, p.col, p.node, p.message) for p in found] == [
        (4, 10, "a", "self loop: 'a' lists itself as a child")]


def test_several_start_nodes_are_all_named() -> None:
    text = spec("""
models:
  m1: {url: m1.mar}
dag:
  pre_a: [m1]
  pre_b: [m1]
  m1: []
  lonely:
""")
    found = problems_of(text)
    assert len(found) == 1
    assert (found[0].line, found[0].col) == (4, 3)
    assert found[0].message == (
        "several start nodes (nodes no other node lists as a child): 'pre_a' (line 4), "
        "'pre_b' (line 5), 'lonely' (line 7); a workflow has exactly one")


def test_graph_and_setting_problems_come_together() -> None:
    text = spec("""
models:
  m1: {url: a.mar, batch-size: 0}
dag:
  m1: [f]
  f: [m1]
""")
    assert [(p.line, p.message) for p in problems_of(text)] == [
        (2, "batch-size must be an integer >= 1, got 0"),
        (5, "cycle: m1 -> f -> m1"),
    ]


def test_min_workers_above_an_explicit_max_workers() -> None:
    text = spec("""
models:
  min-workers: 3
  max-workers: 2
  m1: {url: a.mar, max-workers: 1, min-workers: 1}
  m2: {url: b.mar, min-workers: 5, max-workers: 4}
dag:
  m1: [m2]
""")
    assert [(p.line, p.node, p.message) for p in problems_of(text)] == [
        (3, None, "min-workers (3) is greater than max-workers (2): raise max-workers or "
                  "lower min-workers"),
        (5, "m2", "min-workers (5) is greater than max-workers (4): raise max-workers or "
                  "lower min-workers"),
    ]


def test_duplicate_and_non_string_keys() -> None:
    text = spec("""
models:
  m1: {url: a.mar}
  m1: {url: b.mar}
  123: {url: c.mar}
dag:
  m1: [f]
""")
    found = problems_of(text)
    assert [(p.line, p.col) for p in found] == [(3, 3), (4, 3)]
    assert found[0].message == "duplicate key 'm1' (first written at line 2)"
    assert found[1].message == "key '123' is read as a number, not as a name: quote it ('123')"


@pytest.mark.parametrize("text, line, col, fragment", [
    ("models:\n  m1: {url: a.mar\ndag: {m1: []}\n", 3, 4, "YAML syntax error"),
    ("models:\n  m1:\n    url: a.mar\n   batch-size: 2\ndag: {m1: []}\n", 4, 4,
     "YAML syntax error"),
    ("models: {}\ndag:\n\tf: []\n", 3, 1, "found character '\\t'"),
    ("models: {}\ndag: {f: []}\n---\nmodels: {}\n", 3, 1, "expected a single document"),
    ("models: {}\ndag: {f: *nowhere}\n", 2, 10, "found undefined alias 'nowhere'"),
    ("models:\n  m1: {url: !weird a.mar}\ndag: {m1: []}\n", 2, 13,
     "could not determine a constructor for the tag '!weird'"),
])
def test_yaml_errors_give_line_and_column(text: str, line: int, col: int, fragment: str) -> None:
    found = problems_of(text)
    assert len(found) == 1
    assert (found[0].line, found[0].col) == (line, col)
    assert fragment in found[0].message


def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        validate_spec_file(missing)
    assert str(info.value) == f"{missing}: spec file not found"
    assert info.value.problems == [Problem(None, None, None, "spec file not found")]


def test_directory_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory"):
        load_spec_file(tmp_path)
    binary = tmp_path / "spec.yaml"
    binary.write_bytes(b"models: {}\ndag: {f: [\xff]}\n")
    with pytest.raises(SpecError) as info:
        validate_spec_file(binary)
    assert (info.value.problems[0].line, info.value.problems[0].col) == (2, 11)
    assert "not UTF-8" in info.value.problems[0].message


def test_spec_error_needs_a_problem_and_formats_without_a_place() -> None:
    with pytest.raises(ValueError):
        SpecError([])
    error = SpecError([Problem(None, None, "f", "gone"), Problem(3, None, None, "x")])
    assert str(error) == "node 'f': gone\n3: x"


def test_alias_bombs_are_refused_quickly() -> None:
    lines = ["models:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    found = problems_of("\n".join(lines) + "\ndag: {f: []}\n")
    assert len(found) == 1 and "too large for a workflow spec" in found[0].message
    assert found[0].line == 6  # l4 is the first list that stands for over 100000 values


def test_recursive_alias_and_deep_nesting() -> None:
    found = problems_of("models: {}\ndag: &d {f: [*d]}\n")
    assert (found[0].line, found[0].message) == (
        2, "a YAML alias refers to a node that contains it (recursive data)")
    deep = problems_of("models: {}\ndag: {f: " + "[" * 3000 + "]" * 3000 + "}\n")
    assert [p.message for p in deep] == ["the YAML is nested too deeply to be a workflow spec"]


def test_an_alias_shares_its_anchor_values_and_their_problems() -> None:
    text = "models:\n  m1: &x {url: a.mar, batch-size: 0}\n  m2: *x\ndag: {m1: [m2]}\n"
    assert where(text) == [(2, 23, "m1"), (3, 3, "m2")]
