#!/usr/bin/env python3
"""An OTLP/HTTP endpoint that accepts every export and keeps nothing, for benchmarks.

    python3 scripts/lib/otlp_sink.py PORT

Answers POST /v1/traces with 200 and an empty ExportTraceServiceResponse (an empty protobuf
message is zero bytes); counts the bytes received and prints the total when stopped.
"""
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = 0


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global received
        received += len(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
    signal.signal(signal.SIGTERM, lambda *_: (print(f"received {received} bytes", flush=True), sys.exit(0)))
    server.serve_forever()


if __name__ == "__main__":
    main()
