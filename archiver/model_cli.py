"""``model-archiver``: build a .mar with torch-model-archiver's flags.

Exit status 0 on success, 1 with one line on stderr for bad input, 2 for usage errors
(argparse).  Nothing is written unless the whole archive could be.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dagserve.archiver.cli_support import run_pack
from dagserve.archiver.pack import ARCHIVE_FORMATS, PACK_RUNTIMES, archive_path, pack_model

PROG = "model-archiver"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Package a model into a TorchServe-compatible model archive (.mar).",
    )
    parser.add_argument("--model-name", required=True,
                        help="model name; the archive is <model-name>.mar (regex ^[A-Za-z0-9][A-Za-z0-9_\\-.]*$)")
    parser.add_argument("-v", "--version", required=True, help="model version")
    parser.add_argument("--serialized-file", help="state_dict (.pt/.pth) or TorchScript file")
    parser.add_argument("--model-file", help="Python file defining the model class (eager mode)")
    parser.add_argument("--handler", required=True,
                        help="a built-in handler name or path/file[.py][:function]")
    parser.add_argument("--extra-files", help="comma-separated files; a directory contributes its contents")
    parser.add_argument("--runtime", default="python", choices=PACK_RUNTIMES, help="default: python")
    parser.add_argument("--export-path", help="directory to write to (default: current directory)")
    parser.add_argument("--archive-format", default="default", choices=ARCHIVE_FORMATS,
                        help="default (.mar, deflated), zip-store (.mar, stored), "
                             "tgz (<name>.tar.gz), no-archive (directory <name>/)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing archive")
    parser.add_argument("-r", "--requirements-file", help="requirements.txt for the model's dependencies")
    parser.add_argument("-c", "--config-file", help="model-config.yaml")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    export = Path(args.export_path) if args.export_path is not None else Path.cwd()
    return run_pack(
        PROG, lambda: archive_path(export, args.model_name, args.archive_format), args.force,
        lambda: pack_model(
            model_name=args.model_name,
            version=args.version,
            handler=args.handler,
            serialized_file=args.serialized_file,
            model_file=args.model_file,
            extra_files=args.extra_files,
            runtime=args.runtime,
            export_path=export,
            archive_format=args.archive_format,
            force=args.force,
            requirements_file=args.requirements_file,
            config_file=args.config_file,
        ))


if __name__ == "__main__":
    sys.exit(main())
