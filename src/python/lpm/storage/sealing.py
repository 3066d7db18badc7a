"""Encryption at rest: checkpoint archives sealed as an authenticated stream (AES-256-GCM, chunk by chunk).

Checkpoints hold process memory (keys, tokens, passwords), so the agent seals every archive before it reaches
the repository when it has keys. The scheme is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár,
"Online authenticated-encryption and its nonce-reuse misuse-resistance", 2015) over AES-256-GCM:

- every archive gets its own random 256-bit data key, wrapped (AES-256-GCM) by a key-encryption key (KEK)
  from a Kubernetes Secret; the wrap is bound to the KEK's ID and the artifact's URI;
- the plaintext is cut into 1 MiB chunks, each encrypted with nonce = 7-byte random prefix ‖ 32-bit chunk
  counter ‖ last-chunk flag, and authenticated together with the header and the artifact URI.

So flipping any byte, reordering or dropping chunks, cutting the stream short, or moving an archive to another
checkpoint's name all fail authentication (`IntegrityError`: treated as data loss, never restored). The
reader needs nothing but the archive and the KEK named in its header (`KeyUnavailable` otherwise).

Layout: b"LPMSEAL1" | u32 big-endian header length | header (JSON) | chunks (ciphertext ‖ 16-byte tag).

Keys: a directory (the mounted Secret) holding one file per KEK, named by its ID, each 32 raw bytes or their
base64 text, and a file `active` naming the KEK new archives use. Rotation: add a key, point `active` at it;
new checkpoints use it and old ones stay readable while their key stays in the Secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import pathlib
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lpm.storage.backend import IntegrityError, StorageError

MAGIC: Final = b"LPMSEAL1"
ALGORITHM: Final = "AES-256-GCM-STREAM"
CHUNK: Final = 1 << 20
TAG: Final = 16
KEY_BYTES: Final = 32
ACTIVE_FILE: Final = "active"
MAX_HEADER: Final = 4096
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_LENGTH = struct.Struct(">I")


class KeyConfigError(StorageError):
    """The key-encryption keys are missing or malformed."""


class KeyUnavailable(StorageError):
    """An archive is sealed with a key this agent does not hold."""


@dataclass(frozen=True)
class KeyRing:
    """Key-encryption keys by ID, and the one new archives are sealed with (None: write plaintext)."""

    keys: Mapping[str, bytes]
    active: str | None

    def __post_init__(self) -> None:
        for kid, key in self.keys.items():
            if not _KEY_ID.fullmatch(kid) or kid == ACTIVE_FILE:
                raise KeyConfigError(f"encryption key ID {kid!r}: use 1-63 letters, digits, '.', '_' or '-'")
            if len(key) != KEY_BYTES:
                raise KeyConfigError(f"encryption key {kid!r} has {len(key)} bytes; AES-256 needs {KEY_BYTES}")
        if self.active is not None and self.active not in self.keys:
            raise KeyConfigError(
                f"the active encryption key {self.active!r} is not among the keys ({', '.join(sorted(self.keys))})"
            )

    def ring(self) -> KeyRing:
        return self

    def key(self, kid: str, what: str) -> bytes:
        try:
            return self.keys[kid]
        except KeyError:
            held = ", ".join(sorted(self.keys)) or "none"
            raise KeyUnavailable(
                f"{what} is encrypted with key {kid!r}, which this agent does not hold (keys: {held}); "
                f"put that key back into the encryption-keys Secret to read it"
            ) from None


class KeySource(Protocol):
    def ring(self) -> KeyRing:
        """The keys as they are now (a mounted Secret changes when it is rotated)."""


def decode_key(data: bytes, kid: str) -> bytes:
    """A key file's content: 32 raw bytes, or their base64 text (as `kubectl create secret --from-literal`
    with `openssl rand -base64 32` leaves it)."""
    if len(data) == KEY_BYTES:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"encryption key {kid!r} is neither {KEY_BYTES} raw bytes nor base64") from None
    if len(key) != KEY_BYTES:
        raise KeyConfigError(f"encryption key {kid!r} decodes to {len(key)} bytes; AES-256 needs {KEY_BYTES}")
    return key


@dataclass(frozen=True)
class KeyDirectory:
    """Keys in a directory (a mounted Secret), re-read on every `ring()` so that a rotation needs no restart."""

    path: pathlib.Path

    def ring(self) -> KeyRing:
        if not self.path.is_dir():
            raise KeyConfigError(f"encryption keys directory {self.path} does not exist (is the Secret mounted?)")
        keys, active = {}, None
        for entry in sorted(self.path.iterdir()):
            # A mounted Secret also holds the kubelet's `..data` symlink and timestamped directories.
            if entry.name.startswith(".") or entry.is_dir():
                continue
            data = entry.read_bytes()
            if entry.name == ACTIVE_FILE:
                active = data.decode(errors="replace").strip() or None
            else:
                keys[entry.name] = decode_key(data, entry.name)
        if active is None:
            raise KeyConfigError(f"encryption keys directory {self.path} has no {ACTIVE_FILE!r} entry naming a key")
        return KeyRing(keys, active)


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _wrap_aad(kid: str, context: str) -> bytes:
    return b"lpm-data-key\0" + kid.encode() + b"\0" + context.encode()


@dataclass(frozen=True)
class _Header:
    kid: str
    prefix: bytes
    wrap_nonce: bytes
    wrapped: bytes
    chunk: int

    def encode(self) -> bytes:
        body = json.dumps(
            {
                "alg": ALGORITHM,
                "kid": self.kid,
                "chunk": self.chunk,
                "prefix": base64.b64encode(self.prefix).decode(),
                "wrap_nonce": base64.b64encode(self.wrap_nonce).decode(),
                "wrapped_key": base64.b64encode(self.wrapped).decode(),
            },
            sort_keys=True,
        ).encode()
        return MAGIC + _LENGTH.pack(len(body)) + body

    @classmethod
    def decode(cls, body: bytes, what: str) -> _Header:
        try:
            raw = json.loads(body)
            if raw["alg"] != ALGORITHM:
                raise ValueError(f"algorithm {raw['alg']!r}")
            header = cls(
                str(raw["kid"]),
                base64.b64decode(raw["prefix"], validate=True),
                base64.b64decode(raw["wrap_nonce"], validate=True),
                base64.b64decode(raw["wrapped_key"], validate=True),
                int(raw["chunk"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise IntegrityError(f"{what}: encryption header is unreadable ({exc})") from None
        if len(header.prefix) != 7 or len(header.wrap_nonce) != 12 or not 0 < header.chunk <= 64 << 20:
            raise IntegrityError(f"{what}: encryption header is malformed")
        return header


def seal(plain: Iterable[bytes], ring: KeyRing, context: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """Encrypts a stream for the artifact `context` (its URI) with the ring's active key."""
    if ring.active is None:
        raise KeyConfigError("no active encryption key to seal with")
    kek = ring.key(ring.active, context)
    data_key = new_key()
    prefix, wrap_nonce = os.urandom(7), os.urandom(12)
    header = _Header(
        ring.active,
        prefix,
        wrap_nonce,
        AESGCM(kek).encrypt(wrap_nonce, data_key, _wrap_aad(ring.active, context)),
        chunk,
    ).encode()
    aad = hashlib.sha256(header + b"\0" + context.encode()).digest()
    aead = AESGCM(data_key)
    yield header
    # A chunk goes out only once a byte after it is known to exist: the last chunk must carry the flag. Input
    # is sliced, not copied, where it allows (measured: copying through one bytearray cost 30x the AES-GCM).
    pending, index = bytearray(), 0
    held: bytes | None = None  # a whole chunk given as one immutable piece: kept by reference, not copied
    for piece in plain:
        view = memoryview(piece)
        if not view:
            continue
        if held is not None:
            yield aead.encrypt(_nonce(prefix, index, False), held, aad)
            held, index = None, index + 1
        if pending:
            take = chunk - len(pending)
            pending += view[:take]
            view = view[take:]
            if not view:
                continue
            yield aead.encrypt(_nonce(prefix, index, False), bytes(pending), aad)
            pending, index = bytearray(), index + 1
        while len(view) > chunk:
            yield aead.encrypt(_nonce(prefix, index, False), view[:chunk], aad)
            view, index = view[chunk:], index + 1
        if len(view) == chunk and isinstance(piece, bytes):
            held = piece if len(piece) == chunk else bytes(view)
        else:
            pending = bytearray(view)
    last = held if held is not None else bytes(pending)
    yield aead.encrypt(_nonce(prefix, index, True), last, aad)


def unseal(stored: Iterable[bytes], keys: KeySource, context: str, key_id: str | None = None) -> Iterator[bytes]:
    """Decrypts and authenticates a sealed stream chunk by chunk. Raises IntegrityError on any tampering or
    truncation (before yielding the bad chunk's bytes), KeyUnavailable without the archive's key. `key_id`,
    the key its manifest names, must match the header's (a changed ID is damage, not a missing key)."""
    source = iter(stored)
    buffer = bytearray()
    pos = 0  # consumed bytes at the front of `buffer`, dropped only when more is appended (no shifting per frame)

    def fill(n: int) -> bool:
        """Buffers at least `n` unconsumed bytes if the stream has them; pulls from the source only when needed."""
        nonlocal pos
        if len(buffer) - pos >= n:
            return True
        for piece in source:
            if pos:
                del buffer[:pos]
                pos = 0
            buffer.extend(piece)
            if len(buffer) >= n:
                return True
        return len(buffer) - pos >= n

    def take(n: int) -> bytes:
        nonlocal pos
        with memoryview(buffer) as view:
            out = bytes(view[pos : pos + n])
        pos += n
        return out

    fixed = len(MAGIC) + _LENGTH.size
    if not fill(fixed) or bytes(buffer[: len(MAGIC)]) != MAGIC:
        raise IntegrityError(f"{context}: not an LPM-sealed archive (no {MAGIC.decode()} header)")
    (length,) = _LENGTH.unpack(buffer[len(MAGIC) : fixed])
    if length > MAX_HEADER or not fill(fixed + length):
        raise IntegrityError(f"{context}: encryption header is truncated or oversized")
    raw_header = take(fixed + length)
    header = _Header.decode(raw_header[fixed:], context)
    if key_id is not None and header.kid != key_id:
        raise IntegrityError(f"{context}: its header names key {header.kid!r}, its manifest {key_id!r}")
    kek = keys.ring().key(header.kid, context)
    try:
        data_key = AESGCM(kek).decrypt(header.wrap_nonce, header.wrapped, _wrap_aad(header.kid, context))
    except InvalidTag:
        raise IntegrityError(
            f"{context}: its data key does not unwrap with key {header.kid!r} (tampered, or a different key "
            f"under the same ID)"
        ) from None
    aad = hashlib.sha256(raw_header + b"\0" + context.encode()).digest()
    aead = AESGCM(data_key)
    frame, index = header.chunk + TAG, 0
    while fill(frame + 1):  # more than one frame buffered: the first one is not the last
        yield _open(aead, header.prefix, index, False, take(frame), aad, context)
        index += 1
    if len(buffer) - pos < TAG:
        raise IntegrityError(f"{context}: sealed stream is truncated (chunk {index} incomplete)")
    yield _open(aead, header.prefix, index, True, take(len(buffer) - pos), aad, context)


def _open(aead: AESGCM, prefix: bytes, index: int, last: bool, frame: bytes, aad: bytes, context: str) -> bytes:
    try:
        return aead.decrypt(_nonce(prefix, index, last), frame, aad)
    except InvalidTag:
        raise IntegrityError(
            f"{context}: chunk {index} fails authentication (tampered, reordered or truncated); never restored"
        ) from None
