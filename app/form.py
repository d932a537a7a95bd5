"""Read a form body into its fields, in the order they came, and its files, spooled to disk."""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import parse_qsl

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from app.errors import (
    FORM_TOO_LARGE,
    MALFORMED_BODY,
    UNSUPPORTED_CONTENT_TYPE,
    ApiError,
    attachments_too_large,
)
from app.options.model import ServiceOptions

ALLOWANCE = 1024 * 1024  # bytes that the non-file fields may take together
MAX_PARTS = 1000
READ_CHUNK = 64 * 1024  # bytes read from a body or a spooled file at a time
SPOOL_IN_MEMORY = 256 * 1024


@dataclass
class Upload:
    """One file part with a non-empty file name, its bytes spooled and rewound, and hashed as they came
    (the duplicate check's fingerprint needs no second read)."""

    field: str
    filename: str
    stream: IO[bytes]
    size: int = 0
    hash: Any = dataclasses.field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file's bytes, in hex."""
        return str(self.hash.hexdigest())


@dataclass
class Form:
    """The fields of a form in the order they came, and its file parts; a context manager that frees the files."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)

    def close(self) -> None:
        """Free the spooled files."""
        for upload in self.uploads:
            upload.stream.close()

    def __enter__(self) -> Form:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def too_large(max_size: int, headers: dict[str, str] | None = None) -> ApiError:
    """The 202 answer for a request larger than `max_size` plus the allowance."""
    return ApiError([attachments_too_large(max_size)], headers=headers)


def _malformed(why: str) -> ApiError:
    return ApiError.single(MALFORMED_BODY, f"The request body is malformed: {why}.")


def _fields_too_large() -> ApiError:
    return ApiError.single(FORM_TOO_LARGE, f"The form's fields take more than {ALLOWANCE} bytes.")


# The charsets a form may use, by codecs' canonical names: every other codec (punycode, utf-7,
# unicode_escape, ...) is refused before it runs, so decoding stays linear and yields no surrogates.
CHARSETS = {"utf-8", "ascii", "iso8859-1", "cp1252"}
BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046's bchars


def _codec(charset: str) -> str:
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        name = ""
    if name not in CHARSETS:
        raise _malformed(f"charset {charset[:40]!r} is not one of utf-8, us-ascii, iso-8859-1, windows-1252")
    return name


def _decode(raw: bytes, charset: str, name: str) -> str:
    try:
        return raw.decode(_codec(charset))
    except UnicodeDecodeError:
        raise _malformed(f"field {name[:40]!r} is not valid {charset} text") from None


def read_form(stream: IO[bytes], content_type: str | None, content_length: int | None,
              service: ServiceOptions) -> Form:
    """Parse a multipart or urlencoded body; the whole body may take the service's `max_size` plus the allowance."""
    max_size = service.max_size
    # A Content-Length that already says more is refused without reading the body (and the connection closed).
    if (content_length or 0) > max_size + ALLOWANCE:
        raise too_large(max_size, headers={"Connection": "close"})
    mimetype, params = parse_options_header(content_type or "")
    if mimetype == "application/x-www-form-urlencoded":
        return _read_urlencoded(stream, params.get("charset", "utf-8"))
    if mimetype == "multipart/form-data":
        if not params.get("boundary"):
            raise _malformed("multipart/form-data without a boundary")
        if not BOUNDARY.fullmatch(params["boundary"]):
            raise _malformed("the boundary is not 1 to 70 of the characters RFC 2046 allows")
        return _read_multipart(stream, params["boundary"].encode("ascii"), max_size)
    raise ApiError.single(
        UNSUPPORTED_CONTENT_TYPE,
        "Send the form as multipart/form-data or application/x-www-form-urlencoded.",
    )


def _read_urlencoded(stream: IO[bytes], charset: str) -> Form:
    body = stream.read(ALLOWANCE + 1)
    if len(body) > ALLOWANCE:
        raise _fields_too_large()
    codec = _codec(charset)
    try:  # raw bytes (as curl sends them) and percent-escapes are both text in the form's charset
        pairs = parse_qsl(body.decode(codec), keep_blank_values=True, encoding=codec,
                          errors="strict", max_num_fields=MAX_PARTS)
    except UnicodeDecodeError:
        raise _malformed(f"a field is not valid {charset[:40]} text") from None
    except ValueError:
        raise ApiError.single(FORM_TOO_LARGE, f"The form has more than {MAX_PARTS} fields.") from None
    return Form(fields=pairs)


class _MultipartReader:
    """Feeds a MultipartDecoder and keeps the service's limits while the parts arrive."""

    def __init__(self, boundary: bytes, max_size: int) -> None:
        self.decoder = MultipartDecoder(boundary, max_form_memory_size=ALLOWANCE, max_parts=MAX_PARTS)
        self.form = Form()
        self.max_size = max_size
        self.body_bytes = self.field_bytes = self.parts = 0
        self.part: Field | File | None = None
        self.chunks: list[bytes] = []
        self.upload: Upload | None = None

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk (b"" at the end); True once the closing boundary was read."""
        self.body_bytes += len(chunk)
        if self.body_bytes > self.max_size + ALLOWANCE:
            raise too_large(self.max_size)
        self.decoder.receive_data(chunk or None)
        event = self.decoder.next_event()
        while not isinstance(event, (NeedData, Epilogue)):
            if isinstance(event, (Field, File)):
                self._start(event)
            elif isinstance(event, Data):
                self._take(event)
            event = self.decoder.next_event()
        return isinstance(event, Epilogue)

    def _start(self, part: Field | File) -> None:
        self.parts += 1
        if not part.name:
            raise _malformed("a part has no name")
        self.part, self.chunks, self.upload = part, [], None
        if isinstance(part, File) and part.filename:
            stream = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
            self.upload = Upload(part.name, part.filename, stream)
            self.form.uploads.append(self.upload)

    def _take(self, event: Data) -> None:
        if isinstance(self.part, Field):
            self.field_bytes += len(event.data)
            if self.field_bytes > ALLOWANCE:
                raise _fields_too_large()
            self.chunks.append(event.data)
            if not event.more_data:
                charset = parse_options_header(self.part.headers.get("content-type", ""))[1].get("charset", "utf-8")
                self.form.fields.append((self.part.name, _decode(b"".join(self.chunks), charset, self.part.name)))
        elif self.upload is not None:
            self.upload.stream.write(event.data)
            self.upload.hash.update(event.data)
            self.upload.size += len(event.data)
            if not event.more_data:
                self.upload.stream.seek(0)


def _read_multipart(stream: IO[bytes], boundary: bytes, max_size: int) -> Form:
    reader = _MultipartReader(boundary, max_size)
    try:
        while True:
            chunk = stream.read(READ_CHUNK)
            if reader.feed(chunk):
                return reader.form
            if not chunk:
                raise _malformed("the body ends before the closing boundary")
    except RequestEntityTooLarge:  # the decoder's limits: the fields' memory, or the count of parts
        reader.form.close()
        if reader.parts >= MAX_PARTS:
            raise ApiError.single(FORM_TOO_LARGE, f"The form has more than {MAX_PARTS} parts.") from None
        raise _fields_too_large() from None
    except ValueError as exc:
        reader.form.close()
        raise _malformed(str(exc).rstrip(".")) from None
    except BaseException:
        reader.form.close()
        raise
