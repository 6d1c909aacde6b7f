"""The OpenAPI 3 description of the HTTP API, written by hand (tests check it against the server)."""

from __future__ import annotations

from dpr_dist.prompts import MAX_CLAUSES, MAX_PROMPT_CHARS

from .catalogue import MAX_SEARCH_RESULTS
from .recommender import MAX_HISTORY, MAX_K
from .request_body import MAX_BODY_BYTES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {400: "Bad input; `field` names the culprit", 404: "Unknown user or item",
            411: "Content-Length missing", 413: f"Body larger than {MAX_BODY_BYTES} bytes"}
    return {str(code): _json(_ERROR, text[code]) for code in codes}


_ITEM = {
    "type": "object",
    "required": ["id", "title", "tags"],
    "properties": {
        "id": {"type": "string", "description": "the data's original item id"},
        "title": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
_SCORED = {"allOf": [_ITEM, {"type": "object", "required": ["rank", "score"],
                             "properties": {"rank": {"type": "integer"}, "score": {"type": "number"}}}]}
_STRINGS = {"type": "array", "items": {"type": "string", "maxLength": MAX_PROMPT_CHARS}}

SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "field"],
              "properties": {"error": {"type": "string"}, "field": {"type": "string"}}},
    "Item": _ITEM,
    "ScoredItem": _SCORED,
    "RecommendRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "Exactly one of user, history, history_titles.",
        "properties": {
            "user": {"type": "integer", "description": "dense user id of the prepared data"},
            "history": {"type": "array", "maxItems": MAX_HISTORY, "description": "original item ids, oldest first",
                        "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
            "history_titles": {"type": "array", "maxItems": MAX_HISTORY, "items": {"type": "string"},
                               "description": "titles (case-insensitive; a trailing '(year)' may be left out)"},
            "prompt": {
                "nullable": True,
                "description": f"free text (clauses split at ';', 'but', 'except', 'without'; at most "
                               f"{MAX_PROMPT_CHARS} characters, {MAX_CLAUSES} clauses) or structured; null = no prompt",
                "oneOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
                    {"type": "object", "additionalProperties": False,
                     "properties": {"more": _STRINGS, "less": _STRINGS}},
                ],
            },
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
            "filter": {"type": "boolean", "default": False,
                       "description": "hard filter: drop items carrying a tag named in a negative clause from the DPR list"},
        },
    },
    "Clause": {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "given": {"type": "string", "enum": ["more", "less"], "nullable": True},
            "routed": {"type": "string", "enum": ["more", "less"]},
            "p_more": {"type": "number"},
            "polarity": {"type": "string", "enum": ["more", "less"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "cached": {"type": "boolean"},
        },
    },
    "Recommendation": {
        "type": "object",
        "properties": {
            "user": {"type": "integer", "nullable": True},
            "history_length": {"type": "integer"},
            "history_recent": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
            "clauses": {"type": "array", "items": {"$ref": "#/components/schemas/Clause"}},
            "filter": {"type": "boolean"},
            "filtered_tags": {"type": "array", "items": {"type": "string"}},
            "dpr": {"type": "array", "items": {"$ref": "#/components/schemas/ScoredItem"}},
            "backbone": {"type": "array", "items": {"$ref": "#/components/schemas/ScoredItem"}},
            "entered": {"type": "array", "items": {"type": "string"}, "description": "ids in dpr, not in backbone"},
            "left": {"type": "array", "items": {"type": "string"}, "description": "ids in backbone, not in dpr"},
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
}

PATHS = {
    "/recommend": {"post": {
        "summary": "DPR's list and the backbone's list for a user or a history, with an optional prompt",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/RecommendRequest"}}}},
        "responses": {"200": _json({"$ref": "#/components/schemas/Recommendation"}, "Both lists"),
                      **_errors(400, 404, 411, 413)},
    }},
    "/items/search": {"get": {
        "summary": "Items whose title contains q (case-insensitive)",
        "parameters": [
            {"name": "q", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                        "maximum": MAX_SEARCH_RESULTS, "default": 20}},
        ],
        "responses": {"200": _json({"type": "object", "properties": {
            "query": {"type": "string"}, "results": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}},
            "Matching items"), **_errors(400)},
    }},
    "/health": {"get": {"summary": "Liveness", "responses": {"200": _json(
        {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}}, "Alive")}}},
    "/info": {"get": {"summary": "Model, data and cache information",
                      "responses": {"200": _json({"type": "object"}, "Information")}}},
    "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}},
    "/": {"get": {"summary": "The web demo", "responses": {"200": {"description": "HTML page",
                                                                    "content": {"text/html": {}}}}}},
}


def openapi_document(version: str = "0.1.0") -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "dpr-dist recommendations", "version": version,
                 "description": "Promptable recommendations from a trained DPR checkpoint."},
        "paths": PATHS,
        "components": {"schemas": SCHEMAS},
    }
