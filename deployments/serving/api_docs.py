"""``GET /docs``: Swagger UI from the installed ``swagger-ui-bundle-v2`` package, not a CDN, so
the page works on a machine without internet (FastAPI's own ``/docs`` loads it from jsDelivr).
It must be Swagger UI 5 or later: FastAPI writes OpenAPI 3.1, which 4.x cannot render.

Only the three files the page needs are served, by name; ReDoc (CDN only) is not offered.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

__all__ = ["install_docs", "ASSETS", "swagger_ui_dir", "swagger_ui_version"]

# What the page loads, below /docs/static/ (served from swagger-ui-bundle's vendor directory).
ASSETS = {"js": "swagger-ui-bundle.js", "css": "swagger-ui.css", "favicon": "favicon-32x32.png"}


def swagger_ui_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


def swagger_ui_version() -> tuple[int, ...]:
    """The bundled Swagger UI's version, from its directory (``vendor/swagger-ui-5.31.0``)."""
    return tuple(int(n) for n in swagger_ui_dir().name.rsplit("-", 1)[1].split("."))


def install_docs(app: FastAPI) -> None:
    """Add ``/docs`` and its assets to ``app`` (made with ``docs_url=None, redoc_url=None``)."""
    directory = swagger_ui_dir()
    files = {name: directory / name for name in ASSETS.values()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:  # a changed package layout fails at start, not as a blank page
        raise RuntimeError(f"swagger-ui-bundle-v2 lacks {', '.join(missing)}")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} — Swagger UI",
            swagger_js_url=f"{root}/docs/static/{ASSETS['js']}",
            swagger_css_url=f"{root}/docs/static/{ASSETS['css']}",
            swagger_favicon_url=f"{root}/docs/static/{ASSETS['favicon']}",
            # Swagger UI would otherwise send the schema to validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs/static/{name}", include_in_schema=False)
    async def swagger_ui_asset(name: str) -> FileResponse:
        path = files.get(name)
        if path is None:
            raise HTTPException(404, f"no such file: {name[:100]}")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})
