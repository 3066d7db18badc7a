"""Artifact URIs and the on-disk layout of a checkpoint repository.

    <root>/<podUID>/<checkpointID>/<container>/dump.tar.zst
    <root>/<podUID>/<checkpointID>/<container>/manifest.json
    <root>/<podUID>/<checkpointID>/.checkpoint-complete

`shared://<podUID>/<checkpointID>/<container>/dump.tar.zst` names an archive independently of where the
repository is mounted. Every component is validated strictly (UID format, DNS-1123 labels), so no URI can
name a path outside the repository: no `..`, no absolute paths, no separators or NULs hidden in a component.
"""

from __future__ import annotations

import pathlib
import posixpath
from dataclasses import dataclass
from typing import Final

from lpm.api.names import InvalidName, require_label, require_uid

SCHEME: Final = "shared://"
ARCHIVE_NAME: Final = "dump.tar.zst"
MANIFEST_NAME: Final = "manifest.json"
COMPLETE_MARKER: Final = ".checkpoint-complete"


class InvalidArtifactURI(InvalidName):
    """A string that is not a well-formed LPM artifact URI."""


@dataclass(frozen=True)
class CheckpointKey:
    """Identifies one pod checkpoint: all containers checkpointed together share it."""

    pod_uid: str
    checkpoint_id: str

    def __post_init__(self) -> None:
        require_uid("pod UID", self.pod_uid)
        require_label("checkpoint ID", self.checkpoint_id)

    @property
    def relative_dir(self) -> str:
        return f"{self.pod_uid}/{self.checkpoint_id}"

    @property
    def marker_path(self) -> str:
        return f"{self.relative_dir}/{COMPLETE_MARKER}"

    def artifact(self, container: str) -> ArtifactRef:
        return ArtifactRef(self.pod_uid, self.checkpoint_id, container)


@dataclass(frozen=True)
class ArtifactRef:
    """One container's stored archive."""

    pod_uid: str
    checkpoint_id: str
    container: str

    def __post_init__(self) -> None:
        require_uid("pod UID", self.pod_uid)
        require_label("checkpoint ID", self.checkpoint_id)
        require_label("container name", self.container)

    @property
    def key(self) -> CheckpointKey:
        return CheckpointKey(self.pod_uid, self.checkpoint_id)

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.relative_dir}/{ARCHIVE_NAME}"

    @property
    def relative_dir(self) -> str:
        return f"{self.pod_uid}/{self.checkpoint_id}/{self.container}"

    @property
    def archive_path(self) -> str:
        return f"{self.relative_dir}/{ARCHIVE_NAME}"

    @property
    def manifest_path(self) -> str:
        return f"{self.relative_dir}/{MANIFEST_NAME}"

    @classmethod
    def parse(cls, uri: str) -> ArtifactRef:
        """Parse `shared://<podUID>/<checkpointID>/<container>/dump.tar.zst`, rejecting anything else."""
        if not isinstance(uri, str) or not uri.startswith(SCHEME):
            raise InvalidArtifactURI(f"artifact URI {uri!r} must start with {SCHEME}")
        rest = uri[len(SCHEME) :]
        parts = rest.split("/")
        if len(parts) != 4 or parts[3] != ARCHIVE_NAME:
            raise InvalidArtifactURI(
                f"artifact URI {uri!r} must look like {SCHEME}<podUID>/<checkpointID>/<container>/{ARCHIVE_NAME}"
            )
        try:
            return cls(parts[0], parts[1], parts[2])
        except InvalidName as exc:
            raise InvalidArtifactURI(f"artifact URI {uri!r}: {exc}") from None


def resolve_under(root: pathlib.Path, relative: str) -> pathlib.Path:
    """`root/relative`, refusing any relative path that is absolute or escapes `root`.

    Belt and braces: ArtifactRef already validates each component, this guards every other caller.
    """
    if not relative or relative.startswith("/") or "\x00" in relative:
        raise InvalidName(f"storage path {relative!r} must be relative and non-empty")
    normal = posixpath.normpath(relative)
    if normal != relative.rstrip("/") or normal.startswith("..") or "/../" in f"/{normal}/":
        raise InvalidName(f"storage path {relative!r} is not a plain path below the repository")
    return root / normal
