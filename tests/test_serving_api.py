"""The HTTP API over a real socket: every bad input is a 4xx JSON error naming the field (never a
500), the size bounds hold, the OpenAPI document matches the server, and the API, the CLI and the
library agree on the same case."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from dpr_dist.serving import Recommender
from dpr_dist.serving.http import make_server
from dpr_dist.serving.openapi import openapi_document
from dpr_dist.serving.request_body import MAX_BODY_BYTES, RECOMMEND_FIELDS
from tests.browser.serving_model import trained_checkpoint


def _start(recommender):
    server = make_server(recommender, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_prepared):
    rec = Recommender.load(trained_checkpoint(tmp_path_factory, tiny_prepared), tiny_prepared)
    server = _start(rec)
    yield server
    server.shutdown()
    server.server_close()


def call(server, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    ctype = resp.getheader("Content-Type", "")
    return resp.status, (json.loads(payload) if ctype.startswith("application/json") else payload)


def test_health_info_and_demo_page(api):
    assert call(api, "GET", "/health") == (200, {"status": "ok"})
    status, info = call(api, "GET", "/info")
    assert status == 200 and info["items"] == 292 and info["users"] == 200
    assert info["tags"] == [f"tag{i}" for i in range(8)] and info["encoder"]["kind"] == "hash"
    assert info["model"]["routing"] == "learned" and info["data_matches_checkpoint"] is True
    status, page = call(api, "GET", "/")
    assert status == 200 and b'<script src="/static/app.js">' in page
    for path in ("/static/app.js", "/static/style.css"):
        status, body = call(api, "GET", path)
        assert status == 200 and len(body) > 500
    # No external resources: the page works offline.
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert b"http://" not in call(api, "GET", path)[1] and b"https://" not in call(api, "GET", path)[1]


def test_openapi_document_matches_the_server(api):
    status, doc = call(api, "GET", "/openapi.json")
    assert status == 200 and doc == json.loads(json.dumps(openapi_document()))
    assert doc["openapi"].startswith("3.")
    assert set(doc["components"]["schemas"]["RecommendRequest"]["properties"]) == set(RECOMMEND_FIELDS)
    for path, methods in doc["paths"].items():
        for method in methods:
            if method == "get":
                status, _ = call(api, "GET", path + ("?q=item" if path == "/items/search" else ""))
                assert status == 200, path
    assert set(doc["paths"]["/recommend"]) == {"post"}
    status, answer = call(api, "POST", "/recommend", {"user": 1})
    documented = set(doc["components"]["schemas"]["Recommendation"]["properties"])
    assert status == 200 and set(answer) == documented


def test_search(api):
    status, body = call(api, "GET", "/items/search?q=ITEM%2012&limit=3")
    assert status == 200 and [r["title"] for r in body["results"]] == ["Item 12", "Item 120", "Item 121"]
    assert set(body["results"][0]) == {"id", "title", "tags"}


ERRORS = [
    # (method, path, JSON body or raw bytes, status, field, text in the message)
    ("POST", "/recommend", {"user": 9999}, 404, "user", "unknown user 9999"),
    ("POST", "/recommend", {"history": ["1", "nope"]}, 404, "history[1]", "unknown item id 'nope'"),
    ("POST", "/recommend", {"history_titles": ["Item 1", "Zzz"]}, 404, "history_titles[1]", "no item titled 'Zzz'"),
    ("POST", "/recommend", {"user": 1, "prompt": ""}, 400, "prompt", "empty prompt"),
    ("POST", "/recommend", {"user": 1, "prompt": " ;, "}, 400, "prompt", "empty prompt"),
    ("POST", "/recommend", {"user": 1, "prompt": {"more": [], "less": []}}, 400, "prompt", "empty prompt"),
    ("POST", "/recommend", {"user": 1, "prompt": "x" * 513}, 400, "prompt", "513 characters long; the limit is 512"),
    ("POST", "/recommend", {"user": 1, "prompt": {"less": ["y" * 600]}}, 400, "prompt", "less[0] is 600 characters long"),
    ("POST", "/recommend", {"user": 1, "prompt": "a; b; c; d; e; f; g; h; i"}, 400, "prompt", "9 clauses; the limit is 8"),
    ("POST", "/recommend", {"user": 1, "prompt": {"more": ["a"], "maybe": ["b"]}}, 400, "prompt", "unknown key(s) ['maybe']"),
    ("POST", "/recommend", {"user": 1, "prompt": {"more": [1]}}, 400, "prompt.more[0]", "must be a string, got integer"),
    ("POST", "/recommend", {"user": 1, "prompt": 5}, 400, "prompt", "got integer"),
    ("POST", "/recommend", b"{\"user\": 1,", 400, "body", "malformed JSON at line 1 column 12"),
    ("POST", "/recommend", b"\xff\xfe", 400, "body", "not UTF-8"),
    ("POST", "/recommend", [1, 2], 400, "body", "must be a JSON object, got array"),
    ("POST", "/recommend", {"user": "abc"}, 400, "user", "must be an integer user id, got string"),
    ("POST", "/recommend", {"user": True}, 400, "user", "got boolean"),
    ("POST", "/recommend", {"user": 1, "k": "10"}, 400, "k", "must be an integer, got string"),
    ("POST", "/recommend", {"user": 1, "k": 2.5}, 400, "k", "got number"),
    ("POST", "/recommend", {"user": 1, "k": 0}, 400, "k", "in [1, 100], got 0"),
    ("POST", "/recommend", {"user": 1, "k": 101}, 400, "k", "in [1, 100], got 101"),
    ("POST", "/recommend", {"user": 1, "filter": "yes"}, 400, "filter", "must be a boolean"),
    ("POST", "/recommend", {"history": "1,2"}, 400, "history", "must be an array, got string"),
    ("POST", "/recommend", {"history": [1, None]}, 400, "history[1]", "a string or an integer, got null"),
    ("POST", "/recommend", {"history": []}, 400, "history", "empty"),
    ("POST", "/recommend", {"user": 1, "history": ["1"]}, 400, "user", "exactly one of user, history, history_titles"),
    ("POST", "/recommend", {}, 400, "user", "exactly one of"),
    ("POST", "/recommend", {"user": 1, "colour": "red"}, 400, "colour", "unknown field(s) ['colour']"),
    ("GET", "/items/search", None, 400, "q", "missing or empty"),
    ("GET", "/items/search?q=" + "a" * 201, None, 400, "q", "201 characters; the limit is 200"),
    ("GET", "/items/search?q=item&limit=0", None, 400, "limit", "in [1, 50], got '0'"),
    ("GET", "/items/search?q=item&limit=x", None, 400, "limit", "got 'x'"),
    ("GET", "/nowhere", None, 404, "path", "no such endpoint '/nowhere'"),
    ("GET", "/recommend", None, 405, "method", "use POST /recommend"),
    ("POST", "/health", {}, 405, "path", "no POST endpoint '/health'"),
    ("POST", "/elsewhere", {}, 404, "path", "no POST endpoint '/elsewhere'"),
]


@pytest.mark.parametrize("method,path,body,status,field,text", ERRORS, ids=[f"{e[4]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_input_is_a_4xx_json_error_naming_the_field(api, method, path, body, status, field, text):
    raw = body if isinstance(body, bytes) else None
    got_status, answer = call(api, method, path, None if raw else body, raw=raw)
    assert (got_status, answer["field"]) == (status, field), answer
    assert text in answer["error"] and answer["error"].startswith(f"{field}: ")


def test_request_size_is_bounded_before_reading(api):
    """An oversized Content-Length is refused with 413 without reading the body; no length: 411."""
    import socket

    def reply_to(request: bytes) -> str:
        """The whole reply (headers and body may arrive in separate segments); no body byte is sent."""
        with socket.create_connection(api.server_address[:2], timeout=10) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(4096):  # the server closes the connection after an error
                chunks.append(chunk)
        return b"".join(chunks).decode()

    reply = reply_to(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode())
    assert reply.startswith("HTTP/1.1 413") and f"{MAX_BODY_BYTES + 1} bytes; the limit is {MAX_BODY_BYTES}" in reply
    assert reply_to(b"POST /recommend HTTP/1.1\r\nHost: x\r\n\r\n").startswith("HTTP/1.1 411")
    # Just under the bound is read and parsed (a long, valid history of known ids).
    body = {"history": ["1"] * 2000, "k": 3}
    assert len(json.dumps(body)) < MAX_BODY_BYTES
    assert call(api, "POST", "/recommend", body)[0] == 200


def test_structured_prompt_with_filter(api):
    status, answer = call(api, "POST", "/recommend",
                          {"user": 5, "prompt": {"more": ["tag3"], "less": ["tag0"]}, "k": 10, "filter": True})
    assert status == 200
    assert [(c["text"], c["given"], c["polarity"], c["tags"]) for c in answer["clauses"]] == [
        ("tag3", "more", "more", ["tag3"]), ("tag0", "less", "less", ["tag0"])]
    assert answer["filtered_tags"] == ["tag0"] and len(answer["dpr"]) == 10
    assert not any("tag0" in item["tags"] for item in answer["dpr"])
    assert [i["rank"] for i in answer["dpr"]] == list(range(1, 11))
    assert all(a["score"] >= b["score"] for a, b in zip(answer["dpr"], answer["dpr"][1:]))
    assert answer["entered"] == [i["id"] for i in answer["dpr"] if i["id"] not in {b["id"] for b in answer["backbone"]}]


def test_api_cli_and_library_agree(api, capsys):
    from launch import recommend

    rec = api.recommender
    request = {"history_titles": ["Item 3", "Item 40", "Item 77"], "prompt": "no tag0 please", "k": 10}
    status, answer = call(api, "POST", "/recommend", request)
    assert status == 200
    library = rec.recommend(**request).to_json(rec.catalogue)
    assert recommend.main(["--model", rec.info["checkpoint"], "--data-dir", rec.info["data_dir"], "--history-titles",
                           "Item 3;Item 40;Item 77", "--prompt", "no tag0 please", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    for key in ("dpr", "backbone", "entered", "left", "history_length"):
        assert answer[key] == library[key] == cli[key], key
    # The cache flag differs between the three calls (the first one encoded the prompt).
    strip = lambda clauses: [{k: v for k, v in c.items() if k != "cached"} for c in clauses]
    assert strip(answer["clauses"]) == strip(library["clauses"]) == strip(cli["clauses"])


def test_prompt_cache_stays_within_its_bound(tmp_path_factory, tiny_prepared):
    rec = Recommender.load(trained_checkpoint(tmp_path_factory, tiny_prepared), tiny_prepared, cache_size=5)
    server = _start(rec)
    try:
        assert call(server, "GET", "/info")[1]["prompt_cache"]["size"] == 5   # seeded, bounded
        for i in range(12):
            status, answer = call(server, "POST", "/recommend", {"user": 1, "prompt": f"more tag{i % 8} now {i}"})
            assert status == 200 and answer["clauses"][0]["cached"] is False
        stats = call(server, "GET", "/info")[1]["prompt_cache"]
        assert stats["size"] == 5 and stats["max_size"] == 5 and stats["misses"] == 12
        assert call(server, "POST", "/recommend", {"user": 1, "prompt": "more tag3 now 11"})[1]["clauses"][0]["cached"]
        assert not call(server, "POST", "/recommend", {"user": 1, "prompt": "more tag0 now 0"})[1]["clauses"][0]["cached"]
    finally:
        server.shutdown()
        server.server_close()
