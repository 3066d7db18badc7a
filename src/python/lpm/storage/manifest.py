"""A stored archive's manifest: what its writer knew (sizes, hashes, compression, encryption, provenance)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from lpm.storage.backend import IntegrityError

MANIFEST_VERSION: Final = 1


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ArchiveInfo:
    """What a writer knows about an archive besides its bytes; recorded in its manifest."""

    raw_size: int = 0
    raw_sha256: str = ""  # hex sha256 of the kubelet's uncompressed tar stream
    compression: str = ""  # "zstd", or "" for bytes stored as given
    zstd_level: int = 0
    zstd_threads: int = 0
    pod_namespace: str = ""
    pod_name: str = ""
    node_name: str = ""
    source_archive: str = ""  # the kubelet's file name, for forensics
    checkpointed_at: str = ""
    stored_at: str = ""
    store_seconds: float = 0.0
    criu_version: str = ""
    runtime_name: str = ""
    runtime_version: str = ""
    encryption: str = ""  # "AES-256-GCM-STREAM" (lpm.storage.sealing), or "" for bytes stored in the clear
    key_id: str = ""  # the key-encryption key the archive's data key is wrapped with
    payload_size: int = 0  # of an encrypted archive: the bytes before encryption (the zstd stream)
    payload_sha256: str = ""


@dataclass(frozen=True)
class Manifest:
    container: str
    uri: str
    size: int  # bytes stored (compressed)
    sha256: str  # hex sha256 of the stored bytes
    info: ArchiveInfo = ArchiveInfo()

    @property
    def payload_size(self) -> int:
        """Size of what the writer stored (before encryption): the image layer, or the zstd stream."""
        return self.info.payload_size if self.info.encryption else self.size

    @property
    def payload_sha256(self) -> str:
        return self.info.payload_sha256 if self.info.encryption else self.sha256

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "container": self.container,
            "uri": self.uri,
            "size": self.size,
            "sha256": self.sha256,
            **dataclasses.asdict(self.info),
        }
        return (json.dumps(body, sort_keys=True, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(data)
            known = {f.name for f in dataclasses.fields(ArchiveInfo)}
            # Keys a newer agent added are ignored, so older readers keep working.
            info = ArchiveInfo(**{k: v for k, v in raw.items() if k in known})
            return cls(str(raw["container"]), str(raw["uri"]), int(raw["size"]), str(raw["sha256"]), info)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"manifest {where} is unreadable: {exc}") from None
