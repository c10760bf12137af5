"""The browser pages of CONTRACT.md: the console at / and Swagger UI at /docs, files of
this project (console/) and of the pinned Swagger UI package, served from this origin only
(Content-Security-Policy, no inline script) with no Referer. A missing file is a JSON 404.
"""

import hashlib
import os

import bottle
from swagger_ui_bundle import swagger_ui_path

import config

CONSOLE = str(config.PROJECT_DIR / "console")
SWAGGER_UI = str(swagger_ui_path)
# What docs.html loads; the package's own index.html would start on a petstore.
SWAGGER_UI_FILES = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"}

# This origin only, no inline script, no <base>, not framed. The console shows its report in
# a frame from a blob: URL, and Swagger UI's CSS draws icons from data: URLs.
POLICY = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
CONSOLE_POLICY = f"{POLICY}; frame-src blob:"
DOCS_POLICY = f"{POLICY}; img-src 'self' data:"


def add_routes(app):
    app.get("/", callback=lambda: static_file(CONSOLE, "index.html", CONSOLE_POLICY))
    app.get("/console/<name>", callback=lambda name: static_file(CONSOLE, name, CONSOLE_POLICY))
    app.get("/docs", callback=lambda: static_file(CONSOLE, "docs.html", DOCS_POLICY))
    app.get("/swagger-ui/<name>", callback=swagger_ui_file)


def swagger_ui_file(name):
    if name not in SWAGGER_UI_FILES:
        raise bottle.HTTPError(404)
    return static_file(SWAGGER_UI, name, DOCS_POLICY)


def static_file(root, name, policy):
    """Bottle's static_file (a 304 for a matching If-None-Match or If-Modified-Since),
    with a quoted ETag as HTTP has it, which no-cache makes browsers revalidate."""
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": policy}
    headers["Referrer-Policy"] = "no-referrer"
    try:
        stat = os.stat(os.path.join(root, name))
    except (OSError, ValueError):
        return bottle.static_file(name, root, headers=headers)  # its 404 (or 403)
    version = f"{root}/{name}:{stat.st_mtime_ns}:{stat.st_size}"
    etag = f'"{hashlib.sha256(version.encode()).hexdigest()[:32]}"'
    return bottle.static_file(name, root, etag=etag, headers=headers)
