"""`rsjax serve INDEX`: the search page and JSON API over an index (rsjax/serve/)."""

from __future__ import annotations

from rsjax.errors import InputError


def run(args) -> int:
  if not 0 <= args.port <= 65535:
    raise InputError(f"--port must be 0 to 65535, got {args.port}")
  import asyncio

  import uvicorn

  from rsjax.serve.app import create_app
  from rsjax.serve.engine import Engine

  engine = Engine(args.index, verify=not args.no_verify)
  engine.warm_up()
  app = create_app(engine)
  config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                          access_log=args.log_level == "debug")
  server = uvicorn.Server(config)

  # Say where the page is once the socket is bound (with --port 0, the port the system chose).
  async def announce():
    while not server.started:
      await asyncio.sleep(0.05)
    sock = server.servers[0].sockets[0].getsockname()
    host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
    rows = "before/after pairs" if engine.index.pairs else "images"
    print(f"rsjax serve: {len(engine.index)} {rows} of {engine.path} at http://{host}:{sock[1]}/ "
          f"(API: /api/search, /api/similar/ID, /api/info; OpenAPI: /openapi.json); Ctrl-C stops",
          flush=True)

  async def main():
    task = asyncio.create_task(announce())
    await server.serve()
    task.cancel()

  asyncio.run(main())
  if not server.started:  # the socket could not be bound: uvicorn logged why
    raise InputError(f"could not listen on {args.host}:{args.port} (in use, or not an address of "
                     "this machine)")
  return 0


def register(sub) -> None:
  p = sub.add_parser("serve", help="a search page and JSON API over an index")
  p.add_argument("index", help="an index folder made by `rsjax index`")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to listen on (default 127.0.0.1: this machine only)")
  p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
  p.add_argument("--no-verify", action="store_true", help="skip the CRC-32 check of the files")
  p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
  p.set_defaults(run=run)
