"""graylb: gray-release load balancing inside your httpx and grpcio clients.

balancer = graylb.Balancer(graylb.StaticDiscovery({...}), "rules.yaml")
client = httpx.Client(transport=graylb.GrayTransport(balancer))
with graylb.gray(lane="beta"):
    client.get("http://orders/api/v1/orders/42")
"""

from .balancer import Balancer
from .consul.client import ConsulConfig
from .consul.discovery import ConsulDiscovery
from .consul.registration import ConsulRegistration
from .consul.rules import ConsulRuleSource
from .discovery import Discovery, Snapshot, StaticDiscovery
from .errors import GraylbError, InvalidVersion, MissingVersion, NoInstanceAvailable, NoSnapshot, RuleError
from .instance import Health, Instance
from .nacos.client import NacosConfig
from .nacos.discovery import NacosDiscovery
from .nacos.registration import NacosRegistration
from .nacos.rules import NacosRuleSource
from .propagation.codec import HeaderCodec
from .propagation.context import EMPTY, GrayContext, bind, current, gray
from .propagation.middleware import GrayASGIMiddleware, GrayWSGIMiddleware, trust_networks
from .routing.request import RequestInfo
from .rules.load import parse_rules
from .rules.sources import FileRuleSource, RuleSource, StaticRules
from .served import Served
from .transports.httpx import AsyncGrayTransport, GrayTransport

try:  # the gRPC half needs the graylb[grpc] extra; an httpx-only service goes without it
    import grpc as _grpc  # noqa: F401
except ImportError:
    HAS_GRPC = False
else:
    HAS_GRPC = True
    from .transports.grpc import AioGrayChannel, GrayChannel
    from .transports.grpc_interceptors import (
        AioGrayClientInterceptor,
        AioGrayServerInterceptor,
        GrayClientInterceptor,
        GrayServerInterceptor,
        aio_client_interceptors,
    )

__version__ = "0.1.0"

__all__ = [
    "AsyncGrayTransport",
    "Balancer",
    "bind",
    "ConsulConfig",
    "ConsulDiscovery",
    "ConsulRegistration",
    "ConsulRuleSource",
    "current",
    "Discovery",
    "EMPTY",
    "FileRuleSource",
    "gray",
    "GrayASGIMiddleware",
    "GrayContext",
    "GraylbError",
    "GrayTransport",
    "GrayWSGIMiddleware",
    "HAS_GRPC",
    "HeaderCodec",
    "Health",
    "Instance",
    "InvalidVersion",
    "MissingVersion",
    "NacosConfig",
    "NacosDiscovery",
    "NacosRegistration",
    "NacosRuleSource",
    "NoInstanceAvailable",
    "NoSnapshot",
    "parse_rules",
    "RequestInfo",
    "RuleError",
    "RuleSource",
    "Served",
    "Snapshot",
    "StaticDiscovery",
    "StaticRules",
    "trust_networks",
]
if HAS_GRPC:
    __all__ += [
        "AioGrayChannel",
        "AioGrayClientInterceptor",
        "AioGrayServerInterceptor",
        "GrayChannel",
        "GrayClientInterceptor",
        "GrayServerInterceptor",
        "aio_client_interceptors",
    ]
