"""A plain Python HTTPS server that knows nothing of crank: it takes its certificate,
key, CA and CRL from a directory that `crank agent` keeps fresh (file mode), asks every
client for a certificate, and loads the files again on SIGHUP (the agent's reload
hook). `GET /whoami` answers with the caller's certificate subject and how many
reloads it has done.

    tls_server.py PORT CERT_DIR PID_FILE
"""

import http.server
import json
import os
import signal
import ssl
import sys
import threading

port, cert_dir, pid_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()
state = {"context": None, "reloads": 0}


def load():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.path.join(cert_dir, "client.crt"), os.path.join(cert_dir, "client.key"))
    ctx.load_verify_locations(os.path.join(cert_dir, "ca.crt"))
    crl = os.path.join(cert_dir, "ca.crl")
    if os.path.exists(crl):
        ctx.load_verify_locations(crl)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def serial():
    cert = ssl._ssl._test_decode_cert(os.path.join(cert_dir, "client.crt"))
    return cert["serialNumber"]


def on_hup(_signum, _frame):
    try:
        ctx = load()
    except Exception as err:  # keep serving with the files loaded before
        print(json.dumps({"reload_failed": str(err)}), flush=True)
        return
    with lock:
        state["context"] = ctx
        state["reloads"] += 1
        n = state["reloads"]
    print(json.dumps({"reloaded": n, "serial": serial()}), flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path != "/whoami":
            self.send_error(404)
            return
        peer = self.connection.getpeercert()
        uris = [v for (k, v) in peer.get("subjectAltName", ()) if k == "URI"]
        with lock:
            reloads = state["reloads"]
        body = json.dumps({"caller_spiffe_id": uris[0] if uris else None, "reloads": reloads}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        sock, addr = self.socket.accept()
        with lock:
            ctx = state["context"]
        return ctx.wrap_socket(sock, server_side=True), addr

    def handle_error(self, request, client_address):
        pass


state["context"] = load()
signal.signal(signal.SIGHUP, on_hup)
server = Server(("127.0.0.1", port), Handler)
with open(pid_file, "w") as f:
    f.write(str(os.getpid()))
print(json.dumps({"listening": port, "serial": serial()}), flush=True)
server.serve_forever()
