"""The project's exceptions: each carries a message a reviewer or operator can act on."""

from __future__ import annotations


class BrainScanError(Exception):
    """Base class of every error this project raises on purpose."""


class ScanRejected(BrainScanError):
    """A scan file cannot be classified; `reason` says why in plain words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DatasetError(BrainScanError):
    """A dataset folder is malformed (unknown class folder, no images, ...)."""


class ModelContractError(BrainScanError):
    """A model file and its card disagree, or one of them is missing or unreadable."""


class HistoryUnavailable(BrainScanError):
    """The history database cannot be opened, read or written just now; nothing was recorded."""


class ArchiveError(BrainScanError):
    """The scan archive could not store or give back a scan; nothing was recorded as archived."""


class ArchiveUnavailable(ArchiveError):
    """The scan archive cannot be reached, refused the credentials, or did not answer in time."""


class ArchivedScanMissing(ArchiveError):
    """The archive answers but does not hold the scan the history names."""


class ArchivedScanAltered(ArchiveError):
    """The archive holds the scan, but its bytes no longer hash to the sha256 recorded when it was stored."""
