"""A real S3 protocol server (moto) for pgmedic's tests, on a loopback port the kernel picks.

Prints `port=<N>` on stdout once it accepts connections, then serves until stdin closes or it is
killed, so a test that dies never leaves it running.
"""
import sys
import threading

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"port={server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The parent holds our stdin open; EOF means it is gone.
    sys.stdin.read()


if __name__ == "__main__":
    main()
