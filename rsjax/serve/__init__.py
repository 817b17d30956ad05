"""`rsjax serve`: a search page and a JSON API over an index (FastAPI on uvicorn).

  engine.py      the index and its model, loaded once; text / image queries -> ranked rows
  api.py         /api/search, /api/similar/{id}, /api/info: checked parameters, JSON results
  thumbnails.py  /thumbs/{path}: thumbnails of the archive's images only, made on demand, cached
  geo.py         footprints from GeoTIFF tags or captions.jsonl columns; bounding-box filters
  page.py        the page (static/: HTML, JS, CSS served by rsjax, no build step, no CDN)
  app.py         the application: routes, one-line errors, start-up
  synth_archive.py  writes an RS-Synth split as PNG files + captions.jsonl (`make serve`)
"""
