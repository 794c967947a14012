"""Attachments: files sent with a message, end to end (issue 20, item 1).

A message names each file in its body (`attachments`: name, media type, size,
SHA-256, number of parts), under the sender's inner signature. The bytes follow
split into parts of `PART_BYTES`, each an `attachment_part` message of its own
(`of`: the message, `attachment`: which file, `part`: which part, `data`: the
bytes, base64url): sealed to the recipient like any message, signed, receipted,
deduplicated and sent again after a broken link by the same machinery, and
carried by relays that cannot read them. This is AS4's Split and Join, and for
the same reasons: no frame grows past the envelope's limit, a broken link loses
only the parts without a receipt, and every part's delivery is signed for.

Parts go `routine` whatever their message's priority, so that the outbox and the
link's flash reserve put every flash (and urgent) message ahead of them: a flash
message never waits behind an attachment for more than the one part on the wire.
The recipient joins the parts when an officer downloads the file, and gives the
file only when its size and SHA-256 are those the signed body names.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from network.core.errors import BodyError
from network.core.records import b64encode

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_ATTACHMENTS",
    "MAX_FILE_BYTES",
    "PART_BYTES",
    "AttachmentFile",
    "AttachmentLimits",
    "MediaType",
    "describe",
    "file_name_problem",
    "join_parts",
    "media_type_problem",
    "split",
]

PART_BYTES: Final = 45 * 1024  # a part's bytes: as base64url in a body, under its 64 KiB cap
MAX_ATTACHMENTS: Final = 20  # files per message
MAX_FILE_BYTES: Final = 1024 * 1024 * 1024  # what the protocol allows a file (1 GiB)
MAX_PARTS: Final = math.ceil(MAX_FILE_BYTES / PART_BYTES)
MAX_PART_TEXT: Final = math.ceil(PART_BYTES * 4 / 3)  # base64url characters, unpadded
# What a node takes by default (`[attachments]` in its config changes it).
DEFAULT_MAX_FILE: Final = 25 * 1024 * 1024
DEFAULT_MAX_MESSAGE: Final = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    """What a node takes, as sender and as recipient (`[attachments]` in its config)."""

    max_file: int = DEFAULT_MAX_FILE
    max_message: int = DEFAULT_MAX_MESSAGE


DEFAULT_LIMITS: Final = AttachmentLimits()


class MediaType(StrEnum):
    """The kinds of file a request comes with: orders and forms, screenshots, logs."""

    PDF = "application/pdf"
    PNG = "image/png"
    JPEG = "image/jpeg"
    GIF = "image/gif"
    WEBP = "image/webp"
    TEXT = "text/plain"
    CSV = "text/csv"


# Each binary kind by how its files begin; text must be UTF-8 (checked whole).
_MAGIC: Final = {
    MediaType.PDF: (b"%PDF-",),
    MediaType.PNG: (b"\x89PNG\r\n\x1a\n",),
    MediaType.JPEG: (b"\xff\xd8\xff",),
    MediaType.GIF: (b"GIF87a", b"GIF89a"),
}

_BAD_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f/\\:*?\"<>|\u202a-\u202e\u2066-\u2069]")


def file_name_problem(name: str) -> str | None:
    """Why `name` cannot name a file here (None: it can): a plain name, no folder, no
    control or direction character, not `.` or `..`, at most 255 bytes of UTF-8."""
    if not name or name.strip() != name:
        return "must be a file name, without leading or trailing spaces"
    if len(name.encode()) > 255:
        return "at most 255 bytes of UTF-8"
    if name in (".", "..") or _BAD_NAME.search(name):
        return (
            'a plain file name: no folder, control or direction character, nor / \\ : * ? " < > |'
        )
    if unicodedata.normalize("NFC", name) != name:
        return "must be in Unicode normal form C"
    return None


def media_type_problem(media_type: MediaType, data: bytes) -> str | None:
    """Why `data` is not a file of `media_type` (None: it is): binary kinds by how they
    begin, WebP by its RIFF header, text by being UTF-8."""
    if media_type in _MAGIC:
        if not any(data.startswith(magic) for magic in _MAGIC[media_type]):
            return f"the file does not begin as a {media_type} file does"
        return None
    if media_type is MediaType.WEBP:
        if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            return "the file does not begin as an image/webp file does"
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return f"a {media_type} file must be UTF-8"
    return None


@dataclass(frozen=True, slots=True)
class AttachmentFile:
    """A file an officer attaches: its name, its kind, its bytes."""

    name: str
    media_type: str
    data: bytes


def limits_problem(sizes: Sequence[int], limits: AttachmentLimits) -> str | None:
    """Why files of `sizes` are more than a node takes (None: it takes them)."""
    for i, size in enumerate(sizes):
        if size > limits.max_file:
            return f"attachments[{i}].size: {size} bytes, over the limit of {limits.max_file}"
    if sum(sizes) > limits.max_message:
        return f"attachments: {sum(sizes)} bytes in all, over the limit of {limits.max_message}"
    return None


def describe(files: Sequence[AttachmentFile], limits: AttachmentLimits) -> list[dict[str, object]]:
    """The body's `attachments` for `files`; BodyError naming `attachments[i]`'s field
    when a file is empty, too large, of a kind not taken, or not of its kind."""
    if len(files) > MAX_ATTACHMENTS:
        raise BodyError("attachments", f"at most {MAX_ATTACHMENTS} files per message")
    described: list[dict[str, object]] = []
    total = 0
    for i, file in enumerate(files):
        where = f"attachments[{i}]"
        problem = file_name_problem(file.name)
        if problem is not None:
            raise BodyError(f"{where}.name", problem)
        try:
            kind = MediaType(file.media_type)
        except ValueError:
            kinds = ", ".join(m.value for m in MediaType)
            raise BodyError(f"{where}.media_type", f"must be one of: {kinds}") from None
        if not file.data:
            raise BodyError(f"{where}.size", "the file is empty")
        if len(file.data) > limits.max_file:
            raise BodyError(
                f"{where}.size",
                f"{len(file.data)} bytes, over this node's limit of {limits.max_file}",
            )
        problem = media_type_problem(kind, file.data)
        if problem is not None:
            raise BodyError(f"{where}.media_type", problem)
        total += len(file.data)
        if total > limits.max_message:
            raise BodyError(
                "attachments",
                f"{total} bytes in all, over this node's limit of {limits.max_message}",
            )
        described.append(
            {
                "name": file.name,
                "media_type": kind.value,
                "size": len(file.data),
                "sha256": b64encode(hashlib.sha256(file.data).digest()),
                "parts": parts_for(len(file.data)),
            }
        )
    return described


def parts_for(size: int) -> int:
    """How many parts a file of `size` bytes travels in."""
    return max(1, math.ceil(size / PART_BYTES))


def split(data: bytes) -> list[bytes]:
    """A file's parts, in order."""
    return [data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]


def join_parts(parts: dict[int, bytes], *, size: int, sha256: str, count: int) -> bytes:
    """A file from its parts (by number); BodyError saying what is missing or wrong when
    they do not make the file the signed body names."""
    missing = [n for n in range(count) if n not in parts]
    if missing:
        raise BodyError(
            "parts", f"{count - len(missing)} of {count} parts here so far (part {missing[0]} next)"
        )
    data = b"".join(parts[n] for n in range(count))
    if len(data) != size:
        raise BodyError("size", f"the parts make {len(data)} bytes, not the {size} signed for")
    if b64encode(hashlib.sha256(data).digest()) != sha256:
        raise BodyError("sha256", "the parts do not make the file signed for (SHA-256 differs)")
    return data
