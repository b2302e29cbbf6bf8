"""Header-matched gray release: beta callers go to v2, everyone else stays on v1.

One service "orders" (v1 and v2 on 127.0.0.1) and routes that pick v2 by what a request carries:
an exact header (`user-group: beta`, or the same value in the gray context from upstream), a
regex on an e-mail header, a prefix on a client header, and a list of user ids (`in:` compares
whole values, so `bob` does not let `bobby` in). Prints which version each kind of caller got.

    python examples/header_beta.py

Exits non-zero if any caller lands on the wrong version.
"""

import sys

import httpx

import graylb
from graylb.testing import serve_wsgi


def orders(version):  # a tiny "orders" service that says which version answered
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]


RULES = r"""
services:
  orders:
    subsets: {stable: {version: "^1"}, beta: {version: "^2"}}
    default: stable                       # no route matches: v1
    routes:                               # first match wins
      - name: beta-group
        match:                            # a list is OR
          - headers: {user-group: {exact: beta}}
          - context: {user-group: beta}   # set upstream with graylb.gray(values=...), carried in baggage
        to: [{subset: beta}]
      - name: staff
        match: [{headers: {x-user-email: {regex: '[^@]+@example\.com'}}}]
        to: [{subset: beta}]
      - name: internal-tools
        match: [{headers: {x-client: {prefix: internal-}}}]
        to: [{subset: beta}]
      - name: pilot-users
        match: [{headers: {x-user-id: {in: [alice, bob, carol]}}}]
        to: [{subset: beta}]
"""

# (who, headers, gray-context values, version they must get)
CALLERS = [
    ("beta group", {"user-group": "beta"}, {}, "2.0.0"),
    ("beta via gray context", {}, {"user-group": "beta"}, "2.0.0"),
    ("other group", {"user-group": "gamma"}, {}, "1.4.2"),
    ("near miss group", {"user-group": "beta-testers"}, {}, "1.4.2"),
    ("staff e-mail", {"x-user-email": "dana@example.com"}, {}, "2.0.0"),
    ("outside e-mail", {"x-user-email": "dana@example.com.evil.io"}, {}, "1.4.2"),
    ("internal tool", {"x-client": "internal-dashboard/3.1"}, {}, "2.0.0"),
    ("public app", {"x-client": "ios-app/7.2"}, {}, "1.4.2"),
    ("listed user", {"x-user-id": "bob"}, {}, "2.0.0"),
    ("unlisted user", {"x-user-id": "bobby"}, {}, "1.4.2"),
    ("anonymous", {}, {}, "1.4.2"),
]

v1, v2 = serve_wsgi(orders("1.4.2")), serve_wsgi(orders("2.0.0"))
try:
    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"host": v1.host, "port": v1.port, "version": "1.4.2"},
                {"host": v2.host, "port": v2.port, "version": "2.0.0"},
            ]
        }
    )
    client = httpx.Client(transport=graylb.GrayTransport(graylb.Balancer(registry, RULES)))

    wrong = []
    print(f"{'caller':<22} {'sends':<46} {'got':<6} route")
    for who, headers, values, expected in CALLERS:
        with graylb.gray(values=values):
            r = client.get("http://orders/api", headers=headers)
        sends = ", ".join(f"{k}: {v}" for k, v in headers.items()) or (f"gray(values={values})" if values else "-")
        print(f"{who:<22} {sends:<46} {r.text:<6} {r.extensions['graylb'].route}")
        if r.text != expected:
            wrong.append(f"{who} got {r.text}, expected {expected}")
    client.close()
finally:
    v1.stop(), v2.stop()

if wrong:
    sys.exit("wrong version: " + "; ".join(wrong))
print("OK: every beta caller reached v2, everyone else v1")
