"""``workflow-archiver``: build a .war with torch-workflow-archiver's flags.

The spec is validated before anything is written, by ``dagserve.workflows.validate_spec_file``
(the same check as registration: schema, graph, every problem with its line).
Exit status 0 on success, 1 on bad input (one line on stderr; a spec error lists each
problem), 2 for usage errors (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dagserve.archiver.cli_support import run_pack
from dagserve.archiver.errors import ArchiveError
from dagserve.archiver.pack import pack_workflow

PROG = "workflow-archiver"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Package a workflow into a TorchServe-compatible workflow archive (.war).",
    )
    parser.add_argument("--workflow-name", required=True,
                        help="workflow name; the archive is <workflow-name>.war")
    parser.add_argument("--spec-file", required=True, help="YAML file with the workflow's models and dag")
    parser.add_argument("--handler", required=True, help="Python file with the workflow's functions")
    parser.add_argument("--export-path", help="directory to write to (default: current directory)")
    parser.add_argument("--extra-files", help="comma-separated files; a directory contributes its contents")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing archive")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    export = Path(args.export_path) if args.export_path is not None else Path.cwd()
    validate, spec_error = spec_validator()
    return run_pack(
        PROG, lambda: export / f"{args.workflow_name}.war", args.force,
        lambda: pack_workflow(
            workflow_name=args.workflow_name,
            spec_file=args.spec_file,
            handler=args.handler,
            extra_files=args.extra_files,
            export_path=export,
            force=args.force,
            validate_spec=validate,
        ),
        listed_errors=(spec_error,))


def spec_validator() -> tuple[Callable[[Path], None], type[Exception]]:
    """The spec check to run, and the exception type it raises for an invalid spec."""
    from dagserve.workflows import SpecError, validate_spec_file

    def validate(path: Path) -> None:
        try:
            validate_spec_file(path)
        except OSError as exc:
            raise ArchiveError(f"cannot read spec file {path}: {exc.strerror or exc}") from None

    return validate, SpecError


if __name__ == "__main__":
    sys.exit(main())
