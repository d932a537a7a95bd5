"""Check uploaded files against a service's limits and give each the name and type the email shows."""
from __future__ import annotations

import codecs
import io
import mimetypes
import re
import shutil
import struct
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import IO

import filetype

from app.errors import (
    BAD_FILE_NAME,
    FILE_TYPE_NOT_ALLOWED,
    TOO_MANY_FILES,
    Problem,
    attachments_too_large,
)
from app.form import READ_CHUNK, Upload
from app.options.model import ServiceOptions
from app.rules import CONTROL

FILE_FIELDS = ("files", "files[]")
MAX_NAME = 200
MAX_ZIP_ENTRIES = 1000
MAX_ZIP_UNCOMPRESSED = 1024**3  # bytes the central directory may claim in all
MAX_ZIP_DIRECTORY = MAX_ZIP_ENTRIES * 512  # bytes of central directory: ample for 1000 entries with long names
EOCD_SEARCH = 22 + 65535 + 20  # the end record, the longest comment, and a ZIP64 locator before it
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or the end of an empty one
# The first bytes of the archives a scanner unpacks: zip, rar, 7z, gzip, bzip2, xz, zstd.
ARCHIVE_SIGNATURES = (*ZIP_SIGNATURES, b"Rar!", b"7z\xbc\xaf", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")
MAX_NESTING = 3  # archives in archives: a zip in a zip in a zip is the deepest a form may send for scanning
INSPECTION_BUDGET = 64 * 1024**2  # bytes of inner zips unpacked per file to look into them; beyond, clamd's limits
MIME_TYPES = {
    "pdf": "application/pdf",
    "doc": "application/msword",
    "txt": "text/plain",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "zip": "application/zip",
}
# Extensions whose format has a signature, and the filetype matcher that knows it.
SIGNATURES = {ext: ("jpg" if ext == "jpeg" else ext)
              for ext in ("pdf", "png", "jpg", "jpeg", "gif", "bmp", "zip", "doc")}


@dataclass
class Attachment:
    """A file as the email carries it."""

    filename: str
    content_type: str
    stream: IO[bytes]
    size: int
    sha256: str  # of its bytes, for the duplicate check's fingerprint


def clean_name(raw: str, position: int) -> tuple[str, str]:
    """The name shown in the email and its lower-case extension ("" when it has none)."""
    name = unicodedata.normalize("NFC", re.split(r"[/\\]", raw)[-1]).replace('"', "").strip()
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    if not stem.strip(". "):
        return (f"attachment-{position}.{ext}" if ext else f"attachment-{position}"), ext.lower()
    if len(name) > MAX_NAME:
        name = stem[: max(MAX_NAME - len(ext) - 1, 1)] + "." + ext if ext else name[:MAX_NAME]
    return name, ext.lower()


def _is_text(stream: IO[bytes]) -> bool:
    for encoding in ("utf-8", "cp1252"):
        decoder = codecs.getincrementaldecoder(encoding)()
        stream.seek(0)
        try:
            while chunk := stream.read(READ_CHUNK):
                if b"\0" in chunk:
                    return False
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return True
        except UnicodeDecodeError:
            continue
        finally:
            stream.seek(0)
    return False


def _directory_claims(stream: IO[bytes]) -> tuple[int, int] | None:
    """The entry count and directory size that a zip's end-of-central-directory record claims (ZIP64 too)."""
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - EOCD_SEARCH))
    tail = stream.read()
    stream.seek(0)
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 22:
        return None
    entries, directory = struct.unpack_from("<HI", tail, end + 10)
    locator = end - 20
    if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        zip64_at = struct.unpack_from("<Q", tail, locator + 8)[0]
        stream.seek(zip64_at)
        record = stream.read(56)
        stream.seek(0)
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            return None
        entries, directory = struct.unpack_from("<QQ", record, 32)
    return entries, directory


def _is_harmless_zip(stream: IO[bytes]) -> bool:
    """A readable archive whose central directory claims no bomb; nothing is extracted."""
    # The end record's claims are checked before zipfile reads the directory: memory and CPU per request stay
    # bounded whatever the archive says.
    claims = _directory_claims(stream)
    if claims is None or claims[0] > MAX_ZIP_ENTRIES or claims[1] > MAX_ZIP_DIRECTORY:
        return False
    try:
        with zipfile.ZipFile(stream) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
        return False
    finally:
        stream.seek(0)
    return len(entries) <= MAX_ZIP_ENTRIES and sum(e.file_size for e in entries) <= MAX_ZIP_UNCOMPRESSED


def archive_problem(stream: IO[bytes]) -> str | None:
    """Why a virus scanner could not see into this zip whole (an encrypted entry, archives nested more than
    MAX_NESTING deep), or None."""
    try:
        return _zip_problem(stream, 1, [INSPECTION_BUDGET])
    finally:
        stream.seek(0)


def _zip_problem(stream: IO[bytes], depth: int, budget: list[int]) -> str | None:
    stream.seek(0)
    claims = _directory_claims(stream) if stream.read(4) in ZIP_SIGNATURES else None
    if claims is None or claims[0] > MAX_ZIP_ENTRIES or claims[1] > MAX_ZIP_DIRECTORY:
        return None  # no zip, or one the content check refuses: nothing more to learn here
    try:
        with zipfile.ZipFile(stream) as archive:
            entries = archive.infolist()
            if any(entry.flag_bits & 0x1 for entry in entries):  # general-purpose flag bit 0: encrypted
                return "it holds an encrypted entry"
            for entry in entries:
                with archive.open(entry) as member:
                    head = member.read(8)
                if not head.startswith(ARCHIVE_SIGNATURES):
                    continue
                if depth == MAX_NESTING:
                    return f"it holds archives nested more than {MAX_NESTING} deep"
                if head.startswith(ZIP_SIGNATURES) and entry.file_size <= budget[0]:
                    budget[0] -= entry.file_size
                    with tempfile.SpooledTemporaryFile(max_size=256 * 1024) as inner, archive.open(entry) as member:
                        shutil.copyfileobj(member, inner)  # at most file_size bytes: zipfile stops there
                        if problem := _zip_problem(inner, depth + 1, budget):
                            return problem
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError):
        return None  # what zipfile cannot unpack is left to clamd and its limits
    return None


def content_matches(ext: str, stream: IO[bytes]) -> bool:
    """Whether the bytes are what the extension claims, for the formats that can be told."""
    if ext == "txt":
        return _is_text(stream)
    if ext == "zip" and not _is_harmless_zip(stream):
        return False
    if ext not in SIGNATURES:
        return True
    head = stream.read(8192)
    stream.seek(0)
    return bool(filetype.get_type(ext=SIGNATURES[ext]).match(head))


def check_attachments(uploads: list[Upload], service: ServiceOptions) -> tuple[list[Attachment], list[Problem]]:
    """The attachments of a form's file parts, and every problem with them."""
    uploads = [u for u in uploads if u.field in FILE_FIELDS]
    problems = []
    if len(uploads) > service.max_files:
        problems.append(Problem(TOO_MANY_FILES, f"At most {service.max_files} files may be attached.",
                                field="files", advice=service.max_files))
    if sum(u.size for u in uploads) > service.max_size:
        problems.append(attachments_too_large(service.max_size))
    attachments = []
    for position, upload in enumerate(uploads, start=1):
        if CONTROL.search(upload.filename):
            why = f"File {position}'s name holds a control or text-direction character."
            problems.append(Problem(BAD_FILE_NAME, why, field="files"))
            continue
        name, ext = clean_name(upload.filename, position)
        if ext not in service.file_types:
            allowed = ", ".join(service.file_types)
            problems.append(Problem(FILE_TYPE_NOT_ALLOWED, f'The file "{name}" is not of an allowed type ({allowed}).',
                                    field="files"))
        elif service.check_file_content and not content_matches(ext, upload.stream):
            problems.append(Problem(FILE_TYPE_NOT_ALLOWED, f'The file "{name}" is not a valid .{ext} file.',
                                    field="files"))
        else:
            content_type = MIME_TYPES.get(ext) or mimetypes.guess_type(f"x.{ext}")[0] or "application/octet-stream"
            attachments.append(Attachment(name, content_type, upload.stream, upload.size, upload.sha256))
    return attachments, problems
