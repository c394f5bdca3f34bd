"""Preference-data formats: reading raw rows and normalizing them to one shape.

Every row becomes ``{"prompt_messages", "prompt_text", "chosen", "rejected", "margin", "row"}``:
a chat prompt (``prompt_messages``, a list of ``{role, content}``) or a raw-text prompt
(``prompt_text``), two response strings, and a margin (0.0 when the data has none).

Formats (``format: auto`` picks one from the first row's fields):

- ``standard``: ``prompt``, ``chosen``, ``rejected`` are strings (raw text, no chat template).
- ``implicit``: ``chosen``, ``rejected`` are full texts; the prompt is their longest common prefix.
- ``conversational``: ``chosen``/``rejected`` are lists of messages ending in the assistant
  message (or strings, with ``prompt`` a list of messages). The messages before the final one
  (``chosen[:-1]``, which must equal ``rejected[:-1]``) are the prompt when there are any;
  otherwise ``prompt`` is (a list of messages, or a string taken as one user message).
- ``sharegpt``: ``conversations`` is a list of ``{from, value}``; ``chosen``/``rejected`` are
  ``{from, value}`` (as in LLaMA-Factory's dpo_*_demo.json).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any, Literal, Optional

from varirm.errors import DataError

Format = Literal["auto", "standard", "implicit", "conversational", "sharegpt"]
FORMATS = ("standard", "implicit", "conversational", "sharegpt")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ROLES = ("system", "user", "assistant", "tool")


class BadRow(Exception):
    """Raised inside normalization; becomes a DataError with the file and row attached."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def is_local(source: str) -> bool:
    return os.path.exists(source) or source.endswith(LOCAL_SUFFIXES)


MAX_ROW_BYTES = 16 * 2**20  # one row of a .jsonl file; longer ones are refused, not tokenized for minutes
BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
        b"\xfe\xff": "UTF-16"}


class DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` keeps the last of repeated keys silently; a repeated field is a bad row here."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def _parse_json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)


def _json_problem(e: Exception, whole_file: bool) -> str:
    """One line for why a piece of text (a jsonl line, or a whole .json file) is not usable JSON."""
    if isinstance(e, json.JSONDecodeError):
        return (f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}" if whole_file
                else f"malformed JSON: {e.msg} (column {e.colno})")
    if isinstance(e, DuplicateKey):
        return f"field {e.args[0]!r} appears twice in one object"
    return "JSON nested too deeply"  # RecursionError


def _read_bytes_checked(source: str) -> bytes:
    """The file's bytes; a directory, an unreadable file, or a UTF-16/32 file is one clear error."""
    if os.path.isdir(source):
        raise DataError(source, None, None, "is a directory, not a file")
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(source, None, None, f"cannot read the file ({e.strerror or e})") from None
    for bom, name in BOMS.items():
        if data.startswith(bom):
            raise DataError(source, None, None, f"is {name} encoded (starts with bytes {bom.hex(' ')}); "
                            "save it as UTF-8")
    return data


def _decode(raw: bytes, source: str, row: Optional[int], where: str) -> str:
    """UTF-8 text (a leading BOM dropped); NUL bytes or invalid UTF-8 are a :class:`DataError`."""
    if b"\x00" in raw:
        raise DataError(source, row, None, f"{where}contains NUL bytes (binary data, or not UTF-8 text)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(source, row, None, f"{where}not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
                        "save the file as UTF-8") from None


def read_raw_rows(source: str, split: str = "train") -> Iterator[tuple[int, Any]]:
    """Yield ``(row_index, raw_row)``; a line that is not usable JSON is yielded as a
    :class:`DataError` (so the caller can skip it or raise it). Local json/jsonl are parsed here
    for exact line numbers (UTF-8, with or without a BOM; repeated keys in one object are an
    error); parquet files and Hub dataset ids are read with ``datasets.load_dataset``. A problem
    with the whole file (missing, a directory, unreadable, UTF-16) raises a :class:`DataError`."""
    if source.endswith(LOCAL_SUFFIXES) and not os.path.exists(source):
        raise DataError(source, None, None, "no such file")
    if source.endswith(".jsonl"):
        data = _read_bytes_checked(source)
        row = 0
        for line_no, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"line {line_no}: "
            try:
                if len(line) > MAX_ROW_BYTES:
                    raise DataError(source, row, None, f"{where}is {len(line) / 2**20:.1f} MiB; rows over "
                                    f"{MAX_ROW_BYTES // 2**20} MiB are refused")
                yield row, _parse_json(_decode(line, source, row, where))
            except DataError as e:
                yield row, e
            except (json.JSONDecodeError, DuplicateKey, RecursionError) as e:
                yield row, DataError(source, row, None, f"{where}{_json_problem(e, False)}")
            row += 1
        return
    if source.endswith(".json"):
        try:
            data = _parse_json(_decode(_read_bytes_checked(source), source, None, ""))
        except (json.JSONDecodeError, DuplicateKey, RecursionError) as e:
            raise DataError(source, None, None, _json_problem(e, True)) from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}-style wrappers
        if not isinstance(data, list):
            raise DataError(source, None, None, "expected a JSON array of objects (or use .jsonl, one object per line)")
        yield from enumerate(data)
        return
    import datasets

    if source.endswith(".parquet"):
        _read_bytes_checked(source)
        try:
            ds = datasets.load_dataset("parquet", data_files=source, split="train")
        except Exception as e:  # noqa: BLE001 - pyarrow/datasets raise many kinds for a bad file
            raise DataError(source, None, None, f"not a readable parquet file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    elif os.path.exists(source) and not os.path.isdir(source):
        raise DataError(source, None, None, f"unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")
    else:
        ds = datasets.load_dataset(source, split=split)
    yield from enumerate(ds)


def detect_format(row: Any) -> str:
    if not isinstance(row, dict):
        raise BadRow(None, f"expected an object, got {type(row).__name__}")
    if "conversations" in row:
        return "sharegpt"
    if isinstance(row.get("chosen"), list) or isinstance(row.get("prompt"), list):
        return "conversational"
    if "prompt" in row:
        return "standard"
    if "chosen" in row:
        return "implicit"
    raise BadRow(None, f"cannot tell the format from fields {sorted(row)}; set format to one of {', '.join(FORMATS)} "
                 "and map column names with columns: {prompt: ..., chosen: ..., rejected: ...}")


def _get(row: dict, field: str) -> Any:
    if field not in row:
        raise BadRow(field, "is missing")
    if row[field] is None:
        raise BadRow(field, "is null")
    return row[field]


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadRow(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(field, "is empty")
    return value


def messages(value: Any, field: str, role_key: str = "role", content_key: str = "content",
              role_map: dict[str, str] | None = None) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise BadRow(field, f"must be a list of messages, got {type(value).__name__}")
    if not value:
        raise BadRow(field, "is empty")
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise BadRow(where, f"must be an object with '{role_key}' and '{content_key}', got {type(m).__name__}")
        role = _get_at(m, role_key, where)
        if role_map is not None:
            if role not in role_map:
                raise BadRow(f"{where}.{role_key}", f"unknown role {role!r}; expected one of {sorted(role_map)}")
            role = role_map[role]
        elif role not in ROLES:
            raise BadRow(f"{where}.{role_key}", f"unknown role {role!r}; expected one of {list(ROLES)}")
        out.append({"role": role, "content": _text(_get_at(m, content_key, where), f"{where}.{content_key}")})
    return out


def _get_at(obj: dict, key: str, where: str) -> Any:
    try:
        return _get(obj, key)
    except BadRow as e:
        raise BadRow(f"{where}.{key}", e.message) from None


def _response(value: Any, field: str) -> tuple[list[dict[str, str]], str]:
    """A conversational response: a string, or messages ending in an assistant message.
    Returns (messages before the final one, final content)."""
    if isinstance(value, str):
        return [], _text(value, field)
    msgs = messages(value, field)
    if msgs[-1]["role"] != "assistant":
        raise BadRow(f"{field}[{len(msgs) - 1}].role", "the last message must be from the assistant")
    return msgs[:-1], msgs[-1]["content"]


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def rename(raw: dict, columns: dict[str, str]) -> dict:
    """A copy of ``raw`` with canonical fields added from ``columns`` (canonical -> name in the data)."""
    row = dict(raw)
    row.update({canonical: raw[name] for canonical, name in columns.items() if name in raw})
    return row


def normalize_row(raw: Any, fmt: str, columns: dict[str, str]) -> dict[str, Any]:
    """Normalize one raw row (after renaming ``columns``: canonical name -> name in the data)."""
    if not isinstance(raw, dict):
        raise BadRow(None, f"expected an object, got {type(raw).__name__}")
    row = rename(raw, columns)
    prompt_messages: list[dict[str, str]] = []
    prompt_text = ""
    if fmt == "standard":
        prompt_text = _text(_get(row, "prompt"), "prompt")
        chosen, rejected = _text(_get(row, "chosen"), "chosen"), _text(_get(row, "rejected"), "rejected")
    elif fmt == "implicit":
        if "prompt" in row:  # e.g. row 0 lacked a prompt, or a misspelled columns: entry
            raise BadRow("prompt", "is present, but the format was detected as implicit (no prompt); "
                         "set format explicitly or fix the first row")
        full_c, full_r = _text(_get(row, "chosen"), "chosen"), _text(_get(row, "rejected"), "rejected")
        if full_c == full_r:
            raise BadRow("rejected", "is identical to chosen")
        prompt_text = _common_prefix(full_c, full_r)
        chosen, rejected = full_c[len(prompt_text):], full_r[len(prompt_text):]
        if not chosen or not rejected:
            raise BadRow("chosen" if not chosen else "rejected",
                         "is a prefix of the other response; nothing left to score")
    elif fmt == "conversational":
        head_c, chosen = _response(_get(row, "chosen"), "chosen")
        head_r, rejected = _response(_get(row, "rejected"), "rejected")
        if head_c != head_r:
            raise BadRow("rejected", "the messages before the final assistant message differ from chosen's")
        prompt_messages = head_c
        if not prompt_messages:
            if "prompt" not in row:
                raise BadRow("prompt", "is missing (and chosen has no messages before its final one)")
            prompt = _get(row, "prompt")
            prompt_messages = ([{"role": "user", "content": _text(prompt, "prompt")}] if isinstance(prompt, str)
                               else messages(prompt, "prompt"))
    elif fmt == "sharegpt":
        prompt_messages = messages(_get(row, "conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
        chosen = _sharegpt_response(_get(row, "chosen"), "chosen")
        rejected = _sharegpt_response(_get(row, "rejected"), "rejected")
    else:
        raise BadRow(None, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if chosen == rejected:
        raise BadRow("rejected", "is identical to chosen")
    margin = row.get("margin")
    if margin is None:
        margin = 0.0
    elif isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise BadRow("margin", f"must be a finite number, got {margin!r}")
    return {"prompt_messages": prompt_messages, "prompt_text": prompt_text, "chosen": chosen,
            "rejected": rejected, "margin": float(margin)}


def _sharegpt_response(value: Any, field: str) -> str:
    if isinstance(value, str):
        return _text(value, field)
    if not isinstance(value, dict):
        raise BadRow(field, f"must be an object with 'from' and 'value', got {type(value).__name__}")
    return _text(_get_at(value, "value", field), f"{field}.value")


def load_preference_rows(
    source: str, split: str, fmt: Format, columns: dict[str, str], skip_bad: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read and normalize every row of ``source``. Returns ``(rows, rejects)``.

    With ``skip_bad=False`` the first bad row raises a :class:`DataError` naming file, row and
    field; with ``skip_bad=True`` bad rows are collected in ``rejects`` (with the error and the
    raw row) and left out.
    """
    rows, rejects = [], []
    resolved = None if fmt == "auto" else fmt
    for index, raw in read_raw_rows(source, split):
        try:
            if isinstance(raw, DataError):
                raise raw
            if resolved is None:
                resolved = detect_format(rename(raw, columns) if isinstance(raw, dict) else raw)
            row = normalize_row(raw, resolved, columns)
        except BadRow as e:
            error = DataError(source, index, e.field, e.message)
            if not skip_bad:
                raise error from None
            rejects.append({"source": source, "row": index, "field": e.field, "error": str(error), "data": raw})
            continue
        except DataError as error:
            if not skip_bad:
                raise
            rejects.append({"source": source, "row": index, "field": None, "error": str(error), "data": None})
            continue
        row["row"] = index
        rows.append(row)
    return rows, rejects
