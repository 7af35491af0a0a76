"""Model (.mar) and workflow (.war) archives: manifests, packing, and safe unpacking.

This package imports nothing from ``engine``; ``unpack`` is the only code in dagserve that
opens archives.
"""

from dagserve.archiver.errors import ArchiveError
from dagserve.archiver.manifest import (
    ARCHIVER_VERSION,
    DEFAULT_MODEL_VERSION,
    MODEL_MANIFEST_PATH,
    WORKFLOW_MANIFEST_PATH,
    ModelManifest,
    WorkflowManifest,
    format_created_on,
    read_model_manifest,
    read_workflow_manifest,
)
from dagserve.archiver.pack import ARCHIVE_FORMATS, archive_path, check_name, pack_model, pack_workflow
from dagserve.archiver.sources import BUILTIN_HANDLERS
from dagserve.archiver.unpack import DEFAULT_MAX_FILES, DEFAULT_MAX_TOTAL_BYTES, unpack

__all__ = [
    "ARCHIVER_VERSION",
    "ARCHIVE_FORMATS",
    "BUILTIN_HANDLERS",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_MODEL_VERSION",
    "MODEL_MANIFEST_PATH",
    "WORKFLOW_MANIFEST_PATH",
    "ArchiveError",
    "ModelManifest",
    "WorkflowManifest",
    "archive_path",
    "check_name",
    "format_created_on",
    "pack_model",
    "pack_workflow",
    "read_model_manifest",
    "read_workflow_manifest",
    "unpack",
]
