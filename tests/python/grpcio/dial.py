"""mqtrace's test application over Python grpcio, whose wheel links BoringSSL in and strips
it: one call over a TLS channel to the address given, to be seen as a dark connection.

    python dial.py HOST:PORT

Prints one JSON line with the call's status code; the call is expected to fail (the server
is not gRPC, or its certificate is not trusted): what matters is that TLS began.
"""

import json
import sys

import grpc


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: dial.py HOST:PORT")
    channel = grpc.secure_channel(sys.argv[1], grpc.ssl_channel_credentials())
    call = channel.unary_unary("/apache.rocketmq.v2.MessagingService/QueryRoute")
    try:
        call(b"", timeout=5)
        code = "OK"
    except grpc.RpcError as error:
        code = error.code().name
    channel.close()
    print(json.dumps({"code": code}), flush=True)


if __name__ == "__main__":
    main()
