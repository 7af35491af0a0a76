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
    parser.add_argument("--graph", metavar="FILE",
                        help="also write a picture of the DAG: Mermaid (.mmd, .mermaid), "
                             "Graphviz DOT (.dot, .gv) or JSON (.json), by extension")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    export = Path(args.export_path) if args.export_path is not None else Path.cwd()
    validate, spec_error = spec_validator()
    if args.graph:
        from dagserve.workflows.render import RenderError, format_for_path

        try:
            format_for_path(args.graph)
        except RenderError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        validate = _also_drawing(validate, args.workflow_name, Path(args.graph))
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


def _also_drawing(validate: Callable[[Path], None], name: str,
                  picture: Path) -> Callable[[Path], None]:
    """The spec check, then the DAG's picture written to ``picture`` (the spec is valid)."""
    from dagserve.workflows import load_spec_file
    from dagserve.workflows.render import write_picture

    def validate_and_draw(path: Path) -> None:
        validate(path)
        try:
            write_picture(load_spec_file(path, name=name).to_json(), picture)
        except OSError as exc:
            raise ArchiveError(f"cannot write graph {picture}: {exc.strerror or exc}") from None

    return validate_and_draw


if __name__ == "__main__":
    sys.exit(main())
