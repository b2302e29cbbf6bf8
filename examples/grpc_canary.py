import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc   # your own stubs here
from graylb.testing.grpc_server import serve_echo                   # two tiny Echo servers

v1, v2 = serve_echo("orders", "1.4.2"), serve_echo("orders", "2.0.0")
registry = graylb.StaticDiscovery({"orders": [v1.static_entry(), v2.static_entry()]})
rules = {"services": {"orders": {
    "subsets": {"stable": {"version": "^1.4"}, "canary": {"version": "^2.0"}},
    "default": "stable",
    "routes": [
        {"name": "beta-users", "match": [{"headers": {"user-group": "beta"}}], "to": [{"subset": "canary"}]},
        {"name": "ten-percent", "to": [{"subset": "canary", "weight": 10}, {"subset": "stable", "weight": 90}],
         "sticky": {"header": "x-user-id"}},
    ],
}}}
balancer = graylb.Balancer(registry, rules)
stub = echo_pb2_grpc.EchoStub(graylb.GrayChannel(balancer, "orders"))   # was grpc.insecure_channel(...)

print(stub.Say(echo_pb2.SayRequest(text="hi"), metadata=[("user-group", "beta")]).version)   # 2.0.0
reply, call = stub.Say.with_call(echo_pb2.SayRequest(text="hi"), metadata=[("x-user-id", "alice")])
print(reply.version, call.graylb.route)                                 # alice's version, ten-percent
with graylb.gray(pins={"orders": "1.4.2"}):                             # a pin wins over every rule
    print(stub.Say(echo_pb2.SayRequest(text="hi"), metadata=[("user-group", "beta")]).version)  # 1.4.2
v1.stop(), v2.stop()
