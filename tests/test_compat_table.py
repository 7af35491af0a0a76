"""docs/compat-table.md stays in step with the code: every section's table is exactly what
``engine/ts_catalogue.py`` says (names, statuses, notes), the config keys the catalogue calls
supported are the ones config.py really parses, and every supported ``torchserve`` flag is
one dagserve's parser takes.

After changing the catalogue, regenerate the tables with ``python tests/test_compat_table.py``
and paste them into the doc."""

from __future__ import annotations

from pathlib import Path

from dagserve.engine import config as config_module
from dagserve.engine.cli import build_parser
from dagserve.engine.ts_catalogue import (CLI_FLAGS, CONFIG_KEYS, MODEL_CONFIG_KEYS, SECTIONS,
                                          STATUSES, UNSUPPORTED)

DOC = Path(__file__).resolve().parent.parent / "docs" / "compat-table.md"

# Keys honoured outside config.py's parser: ``version`` is only written into snapshots,
# metrics a handler emits are always exported.
HANDLED_ELSEWHERE = {"version", "model_metrics_auto_detect"}


def table(section: str) -> str:
    rows = ["| name | status | notes |", "|---|---|---|"]
    for entry in SECTIONS[section].values():
        rows.append(f"| `{entry.name}` | {entry.status} | {entry.note} |")
    return "\n".join(rows)


def test_every_section_of_the_doc_is_the_catalogue():
    text = DOC.read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in text, f"docs/compat-table.md lacks the section {section}"
        body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
        assert table(section) in body, (
            f"the {section} table of docs/compat-table.md is out of date: run "
            f"python tests/test_compat_table.py")


def test_statuses_are_known_and_supported_config_keys_are_parsed():
    for entries in SECTIONS.values():
        assert all(e.status in STATUSES for e in entries.values())
    parsed = (config_module._BOOL_KEYS | config_module._INT_KEYS | config_module._STR_KEYS
              | config_module._PATH_KEYS | config_module._LIST_KEYS
              | {"allowed_urls", "models", "token_expiration_min", "service_envelope"})
    for key, entry in CONFIG_KEYS.items():
        if entry.status == UNSUPPORTED:
            assert key not in parsed, f"{key} is parsed but the catalogue says unsupported"
        else:
            assert key in parsed | HANDLED_ELSEWHERE, \
                f"the catalogue says {key} is {entry.status}, but config.py does not read it"


def test_every_key_config_py_parses_is_known_so_never_warned_about():
    from dagserve.engine.ts_catalogue import DAGSERVE_KEYS

    parsed = (config_module._BOOL_KEYS | config_module._INT_KEYS | config_module._STR_KEYS
              | config_module._PATH_KEYS | config_module._LIST_KEYS)
    unknown = parsed - set(CONFIG_KEYS) - DAGSERVE_KEYS
    assert not unknown, f"add {sorted(unknown)} to ts_catalogue.DAGSERVE_KEYS"


def test_supported_flags_exist_in_the_parser():
    options = build_parser()._option_string_actions
    for name, entry in CLI_FLAGS.items():
        for flag in name.split("/"):
            assert flag in options, f"{flag} ({entry.status}) is not a dagserve flag"


def test_model_config_keys_read_by_the_server_are_supported():
    from dagserve.engine import model_config_keys as model_config

    for key in ("deviceType", "deviceIds", "jobQueueSize", "maxRetryTimeoutInSec"):
        assert MODEL_CONFIG_KEYS[key].status != UNSUPPORTED
    assert model_config.unsupported_model_config_keys({"deviceIds": [0], "torchrun": {},
                                                      "handler": {}}) == ["torchrun"]


if __name__ == "__main__":
    for name in SECTIONS:
        print(f"## {name}\n\n{table(name)}\n")
