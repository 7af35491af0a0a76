"""``dagserve install-aliases``: the TorchServe command names (``torchserve``,
``torch-model-archiver``, ``torch-workflow-archiver``) as small scripts that run dagserve's
commands, written into the environment's scripts directory (or ``--bin-dir``).

A file of that name that dagserve did not write (a real TorchServe's script) is never
overwritten: it is reported and left alone. ``--remove`` deletes only dagserve's own."""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path
from typing import Sequence

MARKER = "# dagserve alias script (written by `dagserve install-aliases`)"
ALIASES = {
    "torchserve": "dagserve.engine.cli",
    "torch-model-archiver": "dagserve.archiver.model_cli",
    "torch-workflow-archiver": "dagserve.archiver.workflow_cli",
}


def script_text(module: str, python: str = sys.executable) -> str:
    return (f"#!{python}\n{MARKER}\nimport sys\n\nfrom {module} import main\n\n"
            f"if __name__ == \"__main__\":\n    sys.exit(main())\n")


def is_ours(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return MARKER in fh.read(4096)
    except OSError:
        return False


def install(bin_dir: Path, python: str = sys.executable) -> tuple[list[Path], list[Path]]:
    """Write the aliases; (written, skipped because another program owns the name)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for name, module in ALIASES.items():
        path = bin_dir / name
        if (path.exists() or path.is_symlink()) and not is_ours(path):
            skipped.append(path)
            continue
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(script_text(module, python), encoding="utf-8")
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written, skipped


def remove(bin_dir: Path) -> list[Path]:
    removed = []
    for name in ALIASES:
        path = bin_dir / name
        if path.is_file() and is_ours(path):
            path.unlink()
            removed.append(path)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dagserve install-aliases",
        description="Install torchserve, torch-model-archiver and torch-workflow-archiver as "
                    "aliases of dagserve's commands, never replacing a real TorchServe's.")
    parser.add_argument("--bin-dir", default=sysconfig.get_path("scripts"),
                        help="where to write them (default: this environment's scripts "
                             "directory, %(default)s)")
    parser.add_argument("--remove", action="store_true", help="remove dagserve's aliases")
    args = parser.parse_args(argv)
    bin_dir = Path(args.bin_dir)
    if args.remove:
        for path in remove(bin_dir):
            print(f"removed {path}")
        return 0
    try:
        written, skipped = install(bin_dir)
    except OSError as exc:
        print(f"dagserve install-aliases: cannot write to {bin_dir}: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"installed {path}")
    for path in skipped:
        print(f"kept {path}: it belongs to another program (TorchServe?); dagserve's alias "
              f"was not installed", file=sys.stderr)
    return 0
