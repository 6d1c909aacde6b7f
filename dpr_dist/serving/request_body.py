"""Validate the JSON body of POST /recommend into keyword arguments of Recommender.recommend.

Only the shape is checked here (fields and their types); values (unknown items, prompt length,
k's range) are checked by the Recommender, so the CLI and the API share one set of rules.
"""

from __future__ import annotations

import json

from .errors import RequestError

MAX_BODY_BYTES = 64 * 1024
RECOMMEND_FIELDS = ("user", "history", "history_titles", "prompt", "k", "filter")


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(value), type(value).__name__)


def _expect(name: str, value, ok: bool, wanted: str) -> None:
    if not ok:
        raise RequestError(name, f"must be {wanted}, got {_type_name(value)}")


def _string_list(name: str, value, allow_int: bool) -> list:
    _expect(name, value, isinstance(value, list), "an array")
    for i, entry in enumerate(value):
        ok = isinstance(entry, str) or (allow_int and isinstance(entry, int) and not isinstance(entry, bool))
        _expect(f"{name}[{i}]", entry, ok, "a string or an integer" if allow_int else "a string")
    return value


def parse_json_body(raw: bytes) -> object:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RequestError("body", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise RequestError("body", f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def recommend_arguments(body: object) -> dict:
    _expect("body", body, isinstance(body, dict), "a JSON object")
    unknown = sorted(set(body) - set(RECOMMEND_FIELDS))
    if unknown:
        raise RequestError(unknown[0], f"unknown field(s) {unknown}; allowed: {list(RECOMMEND_FIELDS)}")
    args = {}
    if body.get("user") is not None:
        user = body["user"]
        if isinstance(user, str) and user.strip().isdigit():
            user = int(user)
        _expect("user", user, isinstance(user, int) and not isinstance(user, bool), "an integer user id")
        args["user"] = user
    if body.get("history") is not None:
        args["history"] = _string_list("history", body["history"], allow_int=True)
    if body.get("history_titles") is not None:
        args["history_titles"] = _string_list("history_titles", body["history_titles"], allow_int=False)
    if "prompt" in body and body["prompt"] is not None:
        prompt = body["prompt"]
        _expect("prompt", prompt, isinstance(prompt, (str, dict)), 'a string or an object {"more": [...], "less": [...]}')
        if isinstance(prompt, dict):
            for key, value in prompt.items():
                if key in ("more", "less"):
                    _string_list(f"prompt.{key}", value, allow_int=False)
        args["prompt"] = prompt
    if "k" in body:
        k = body["k"]
        _expect("k", k, isinstance(k, int) and not isinstance(k, bool), "an integer")
        args["k"] = k
    if "filter" in body:
        _expect("filter", body["filter"], isinstance(body["filter"], bool), "a boolean")
        args["filter"] = body["filter"]
    return args
