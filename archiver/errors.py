"""The one exception type of the archiver package."""

from __future__ import annotations


class ArchiveError(ValueError):
    """An archive or its inputs are invalid, unsafe, or could not be written.

    The message is one line meant for the user: it says what is wrong and names the
    file involved.
    """
