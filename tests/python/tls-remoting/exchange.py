"""RocketMQ remoting frames over TLS through Python's ssl module (CPython's _ssl over the
system's libssl: SSL_write_ex and SSL_read_ex on a socket BIO), a server and a client in two
processes, as a broker and its client are.

usage: exchange.py server CERT KEY FRAMES   prints "port N", then serves one client
       exchange.py client PORT FRAMES        sends each request, waits for its response

FRAMES holds hex lines, a request and its response in turn (real frames a Rust client and its
broker exchanged, given new opaques and message ids by the test). Each side prints
{"done": true, "exchanges": N} when it is through.
"""
import json
import socket
import ssl
import sys


def read_exactly(tls, length):
    data = b""
    while len(data) < length:
        chunk = tls.recv(length - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def exchanges(frames_path):
    with open(frames_path) as f:
        frames = [bytes.fromhex(line.strip()) for line in f if line.strip()]
    return list(zip(frames[0::2], frames[1::2]))


def serve(cert, key, frames_path):
    pairs = exchanges(frames_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"port {listener.getsockname()[1]}", flush=True)
    connection, _ = listener.accept()
    with context.wrap_socket(connection, server_side=True) as tls:
        for request, response in pairs:
            read_exactly(tls, len(request))
            tls.sendall(response)
        # The client closes first, once it has every response.
        tls.recv(1)
    print(json.dumps({"done": True, "exchanges": len(pairs)}), flush=True)


def connect(port, frames_path):
    pairs = exchanges(frames_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", int(port)))) as tls:
        for request, response in pairs:
            tls.sendall(request)
            read_exactly(tls, len(response))
    print(json.dumps({"done": True, "exchanges": len(pairs)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(*sys.argv[2:5])
    else:
        connect(*sys.argv[2:4])
