"""A hello-world HTTP server for the demo and the end-to-end tests: `python3 scripts/hello_server.py ADDRESS PORT`.

socketserver.TCPServer, not http.server.HTTPServer: the latter looks up its own
name (getfqdn) between bind and listen, which hangs in a namespace with no
resolver. It answers as the documents' Flask app does.
"""

import http.server
import socketserver
import sys


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"Hello, World! :)"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.TCPServer):
    allow_reuse_address = True


if __name__ == "__main__":
    Server((sys.argv[1], int(sys.argv[2])), Hello).serve_forever()
