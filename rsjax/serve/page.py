"""The search page: static/index.html, app.js and style.css, served by rsjax itself (no build
step, no CDN, nothing fetched from elsewhere)."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def router() -> APIRouter:
  page = APIRouter()

  @page.get("/", include_in_schema=False)
  def index_page():
    return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

  @page.get("/favicon.ico", include_in_schema=False)
  def favicon():
    return Response(status_code=204)  # no icon; answered so that browsers log no error

  return page


def static_files() -> StaticFiles:
  return StaticFiles(directory=STATIC)
