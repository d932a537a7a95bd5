"""The known-good form and the multipart encoder that the tests and the benchmark share."""
from __future__ import annotations

import uuid
from typing import Any

# What the Widgets SendMessage form posts for a customer; each test changes one thing of it.
GOOD_FORM = {
    "firstName": "Ana",
    "lastName": "Lee",
    "fromAddress": "ana@example.com",
    "subject": "Invoice question",
    "text": "Hello,\r\nmy invoice is wrong.",
}


def multipart(parts: list[tuple[str, Any]]) -> tuple[bytes, str]:
    """Encode parts in the given order; a value (filename, bytes) is a file part."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, value in parts:
        if isinstance(value, tuple):
            filename, content = value
            filename = filename.replace("\\", "\\\\").replace('"', '\\"')  # a quoted-string's escapes
            body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
        else:
            body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            body += value.encode() + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
