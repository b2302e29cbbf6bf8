"""Generated protobuf / gRPC stubs for the .proto files under ``proto/`` (do not edit by hand).

The files are committed so that a fresh clone works without protoc; ``make proto`` regenerates
them and ``tests/integration/test_grpc_echo.py`` fails if they drift from the .proto files.
``proto/graylb/demo/v1/echo.proto`` becomes ``graylb._proto.graylb.demo.v1.echo_pb2`` (+
``echo_pb2_grpc``): protoc writes imports as ``from graylb.demo.v1 import ...``, which ``make
proto`` rewrites to ``from graylb._proto.graylb.demo.v1 import ...``. The protobuf package (and so
the wire names, e.g. ``/graylb.demo.v1.Echo/Say``) and the descriptor file name
(``graylb/demo/v1/echo.proto``) are unchanged.
"""
