"""The page and its assets: content types, caching, HEAD, 404s, and no way out of static/."""

from __future__ import annotations

import http.client

import pytest
import requests

from tests.conftest import error_of, make_proxy, request


def get(proxy, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    return proxy.static(
        request(method=method, url=f"http://localhost:7071/{path}", headers=headers, route_params={"path": path})
    )


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("", "text/html; charset=utf-8"),
        ("index.html", "text/html; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("realtime-session.js", "text/javascript; charset=utf-8"),
        ("styles.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml; charset=utf-8"),
    ],
)
def test_assets_are_served_with_their_content_type(fake, path: str, content_type: str) -> None:
    response = get(make_proxy(fake), path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["ETag"]
    assert response.headers["Access-Control-Allow-Origin"] == "*", "other origins import the modules"
    assert response.get_body()


def test_etag_revalidation_and_head(fake) -> None:
    proxy = make_proxy(fake)
    first = get(proxy, "")
    assert b"<html" in first.get_body().lower()
    again = get(proxy, "", headers={"if-none-match": first.headers["ETag"]})
    assert again.status_code == 304 and again.get_body() == b""
    head = get(proxy, "index.html", method="HEAD")
    assert head.status_code == 200 and head.get_body() == b""
    assert head.headers["Content-Length"] == str(len(first.get_body()))


@pytest.mark.parametrize(
    "path",
    [
        "missing.html",
        "../function_app.py",
        "..%2ffunction_app.py",
        "%2e%2e/function_app.py",
        "%252e%252e/host.json",
        "..\\function_app.py",
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "static/../../host.json",
        ".git/config",
        "C:/Windows/win.ini",
        "index.html%00.js",
        "./index.html",
    ],
)
def test_missing_files_and_traversal_are_404(fake, path: str) -> None:
    response = get(make_proxy(fake), path)
    assert response.status_code == 404
    assert error_of(response, path=None)["code"] == "not_found"


def test_get_on_the_endpoint_says_which_methods_it_takes(fake) -> None:
    response = get(make_proxy(fake), "connect")
    assert (response.status_code, response.headers["Allow"]) == (405, "POST, OPTIONS")
    assert error_of(response, path=None)["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/../function_app.py",
        "/%2e%2e/function_app.py",
        "/..%2f..%2fetc%2fpasswd",
        "/%2e%2e%5cfunction_app.py",
        "/static/%2e%2e/%2e%2e/host.json",
        "//etc/passwd",
        "/%252e%252e%252fhost.json",
    ],
)
def test_traversal_over_http_never_escapes(live, raw_path: str) -> None:
    host, port = live.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", raw_path)  # raw: no client-side normalisation of the path
    response = connection.getresponse()
    body = response.read()
    assert response.status in (404, 400)
    assert b"import" not in body and b"root:" not in body and b"routePrefix" not in body


def test_page_and_head_over_http(live) -> None:
    page = requests.get(live.url + "/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    head = requests.head(live.url + "/app.js", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(requests.get(live.url + "/app.js", timeout=5).content)


def test_the_folder_is_read_once_so_no_request_touches_the_disk(tmp_path) -> None:
    from realtime_proxy.static_files import StaticFiles

    (tmp_path / "index.html").write_text("<html>first</html>")
    files = StaticFiles(tmp_path)
    (tmp_path / "index.html").unlink()  # gone from the disk: served from memory all the same
    (tmp_path / "late.js").write_text("export {}")
    page = files.serve(request(method="GET"), "")
    assert (page.status_code, page.get_body()) == (200, b"<html>first</html>")
    assert files.serve(request(method="GET"), "late.js").status_code == 404, "only what was there at load"
    files.refresh()  # what the local host does when a file changes
    assert files.serve(request(method="GET"), "late.js").status_code == 200
    assert files.serve(request(method="GET"), "").status_code == 404


def test_a_link_out_of_the_folder_is_not_served(tmp_path) -> None:
    from realtime_proxy.static_files import StaticFiles

    (tmp_path / "secret.txt").write_text("outside")
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    assert StaticFiles(tmp_path / "static").serve(request(method="GET"), "leak.txt").status_code == 404
