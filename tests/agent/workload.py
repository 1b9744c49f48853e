"""A workload that knows nothing of crank: it gets its identity from `crank agent` over
the SPIFFE Workload API with py-spiffe (PyPI `spiffe`), the way any SPIFFE workload
does, and prints what it saw as JSON lines for the end-to-end tests.

    workload.py fetch URL      fetch the X509-SVID and bundle, then GET URL over mTLS
    workload.py watch N        print the serial of each X509 context pushed, N of them
    workload.py jwt AUDIENCE   fetch a JWT-SVID, validate it through the agent and
                               locally against the JWT bundle
    workload.py svid           fetch the X509-SVID; print its SPIFFE ID and serial
    workload.py refused        try a fetch that must fail; print the error
    workload.py nometa         call FetchX509SVID without the workload.spiffe.io
                               header (the spec requires it); print the error

The socket comes from SPIFFE_ENDPOINT_SOCKET.
"""

import json
import os
import ssl
import sys
import tempfile
import threading
import urllib.request

from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient


def say(**fields):
    print(json.dumps(fields), flush=True)


def serial_of(svid):
    return format(svid.leaf.serial_number, "x")


def pem_of_chain(certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def fetch(url):
    with WorkloadApiClient(default_timeout=10) as client:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
    trust_domain = svid.spiffe_id.trust_domain
    bundle = bundles.get_bundle_for_trust_domain(trust_domain)
    roots = list(bundle.x509_authorities)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "svid.pem"), os.path.join(tmp, "svid.key")
        with open(cert, "wb") as f:
            f.write(pem_of_chain(svid.cert_chain))
        with open(key, "wb") as f:
            f.write(
                svid.private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        ctx = ssl.create_default_context(cadata=pem_of_chain(roots).decode())
        ctx.load_cert_chain(cert, key)
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            status, body = resp.status, resp.read().decode()
    say(
        spiffe_id=str(svid.spiffe_id),
        serial=serial_of(svid),
        chain=len(svid.cert_chain),
        roots=len(roots),
        status=status,
        body=body,
    )


def watch(count):
    seen = []
    done = threading.Event()

    def on_success(context):
        svid = context.default_svid
        serial = serial_of(svid)
        if not seen or seen[-1] != serial:
            seen.append(serial)
            say(serial=serial, spiffe_id=str(svid.spiffe_id))
        if len(seen) >= count:
            done.set()

    def on_error(err):
        say(error=str(err))

    client = WorkloadApiClient()
    handler = client.stream_x509_contexts(on_success, on_error)
    finished = done.wait(timeout=float(os.environ.get("WATCH_TIMEOUT", "120")))
    handler.cancel()
    client.close()
    sys.exit(0 if finished else 1)


def jwt(audience):
    with WorkloadApiClient(default_timeout=10) as client:
        svid = client.fetch_jwt_svid(audience={audience})
        validated = client.validate_jwt_svid(svid.token, audience)
        bundles = client.fetch_jwt_bundles()
        bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        from spiffe import JwtSvid

        local = JwtSvid.parse_and_validate(svid.token, bundle, {audience})
        wrong = None
        try:
            client.validate_jwt_svid(svid.token, audience + "-other")
        except Exception as err:  # the agent must refuse another audience
            wrong = str(err)
    say(
        spiffe_id=str(svid.spiffe_id),
        validated=str(validated.spiffe_id),
        local=str(local.spiffe_id),
        audience=sorted(local.audience),
        wrong_audience=wrong,
    )


def refused():
    try:
        with WorkloadApiClient(default_timeout=10) as client:
            svid = client.fetch_x509_svid()
        say(unexpected=str(svid.spiffe_id))
        sys.exit(1)
    except Exception as err:
        say(error=str(err))


def svid():
    with WorkloadApiClient(default_timeout=10) as client:
        got = client.fetch_x509_svid()
    say(spiffe_id=str(got.spiffe_id), serial=serial_of(got))


def nometa():
    import grpc
    from spiffe._proto import workload_pb2, workload_pb2_grpc

    target = os.environ["SPIFFE_ENDPOINT_SOCKET"]
    with grpc.insecure_channel(target) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            for _ in stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10):
                say(unexpected="an answer without the header")
                sys.exit(1)
        except grpc.RpcError as err:
            say(error="{}: {}".format(err.code().name, err.details()))


def main():
    what = sys.argv[1]
    if what == "fetch":
        fetch(sys.argv[2])
    elif what == "watch":
        watch(int(sys.argv[2]))
    elif what == "jwt":
        jwt(sys.argv[2])
    elif what == "refused":
        refused()
    elif what == "svid":
        svid()
    elif what == "nometa":
        nometa()
    else:
        sys.exit("unknown mode " + what)


if __name__ == "__main__":
    main()
