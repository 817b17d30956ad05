"""The application: the page, the API and the thumbnails over one Engine, with one-line errors.

Every refusal is JSON {"error": "one line"} with a 4xx status; an unexpected failure is a 500
with a one-line message (its traceback goes to the server's log, never to the client).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rsjax.data.records import BadRecordError
from rsjax.serve import api, page
from rsjax.serve.engine import Engine
from rsjax.serve.thumbnails import NotInIndex, OutsideArchive, Thumbnails

log = logging.getLogger("rsjax.serve")


def _one_line(text: str) -> str:
  return " ".join(str(text).split())[:500]


def _validation_message(exc: RequestValidationError) -> str:
  """'k: Input should be less than or equal to 200' for the first bad parameter."""
  errors = exc.errors()
  if not errors:
    return "bad request"
  first = errors[0]
  where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
  return f"{where}: {first.get('msg', 'invalid')}"


def create_app(engine: Engine) -> FastAPI:
  thumbs = Thumbnails(engine.index.paths)
  # No /docs or /redoc: FastAPI serves them from a CDN, and the page must work offline; the
  # OpenAPI description itself is /openapi.json.
  app = FastAPI(title="rsjax search", version="1", docs_url=None, redoc_url=None,
                description="Text-to-image and image-to-image search over an rsjax index.")

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request: Request, exc: StarletteHTTPException):
    return JSONResponse({"error": _one_line(exc.detail)}, status_code=exc.status_code)

  @app.exception_handler(RequestValidationError)
  async def validation_error(request: Request, exc: RequestValidationError):
    return JSONResponse({"error": _one_line(_validation_message(exc))}, status_code=422)

  @app.exception_handler(Exception)
  async def unexpected(request: Request, exc: Exception):
    log.exception("while answering %s", request.url.path)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"},
                        status_code=500)

  @app.get("/thumbs/{path:path}", include_in_schema=False)
  def thumbnail(path: str):
    try:
      data = thumbs.png(path)
    except NotInIndex as e:
      return JSONResponse({"error": _one_line(e)}, status_code=404)
    except OutsideArchive as e:
      return JSONResponse({"error": _one_line(e)}, status_code=403)
    except BadRecordError as e:  # indexed, but since removed or damaged on disk
      return JSONResponse({"error": _one_line(e)}, status_code=404)
    return Response(data, media_type="image/png",
                    headers={"Cache-Control": "max-age=3600"})

  app.include_router(api.router(engine, thumbs))
  app.include_router(page.router())
  app.mount("/static", page.static_files(), name="static")
  return app
