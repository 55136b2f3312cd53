"""``cnnrt-serve MODEL``: serve a cnnrt model over HTTP with uvicorn."""
import json
import os
import sys
from typing import List, Optional

from ..cli import EXIT_FAILURE, _fail, _guard, _one_line, _parse, _Parser, _positive_int


def _parser():
    p = _Parser(prog="cnnrt-serve",
                description="Serve a cnnrt model over HTTP: POST /predict, GET /healthz, GET /model.",
                epilog="Exit status: 0 after a clean shutdown, 1 the model or server could not "
                       "start, 2 bad arguments.")
    p.add_argument("model", metavar="MODEL", help="model file (.h5)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="server processes, each with its own copy of the model (default 1)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="kernel threads per process (default: every core / workers)")
    p.add_argument("--max-batch", type=_positive_int, default=16,
                   help="images run together at most (default 16)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long a request waits for others to join its batch (default 2)")
    p.add_argument("--max-queue", type=_positive_int, default=256,
                   help="images waiting at most before answering 503 (default 256)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (default 20)")
    p.add_argument("--top", type=_positive_int, default=5, help="classes in 'top' (default 5)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args, code = _parse(parser, argv)
    if args is None:
        return code
    return _guard(parser.prog, lambda: _serve(parser.prog, args))


def _serve(prog, args):
    try:
        import uvicorn
    except ImportError:
        _fail(prog, 'serving needs uvicorn and starlette: pip install "cnnrt[serve]"')
        return EXIT_FAILURE
    from . import create_app
    from ..model import get_num_threads

    threads = args.threads or max(1, get_num_threads() // args.workers)
    cfg = dict(model=os.path.abspath(args.model), threads=threads, max_batch=args.max_batch,
               batch_window_ms=args.batch_window_ms, max_queue=args.max_queue,
               max_body_bytes=max(1, int(args.max_body_mb * 1024 * 1024)), top_k=args.top)
    try:
        rest = {k: v for k, v in cfg.items() if k != "model"}
        app = create_app(cfg["model"], **rest)  # load once here: a bad model fails before listening
    except (ValueError, OSError, ImportError) as exc:
        _fail(prog, f"{args.model}: {_one_line(exc)}")
        return EXIT_FAILURE
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    else:
        del app
        os.environ["CNNRT_SERVE_CONFIG"] = json.dumps(cfg)
        uvicorn.run("cnnrt.serve:_app_from_env", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
