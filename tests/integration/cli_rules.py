"""The rules documents both registries' CLI tests push, undo and roll back."""

RULES_A = """\
version: 1
services:
  orders:
    subsets:
      stable: {version: "^1.4"}
      canary: {version: "^2.0"}
    default: stable
    routes:
      - name: beta-users
        match: [{headers: {user-group: {exact: beta}}}]
        to: [{subset: canary}]
      - name: ten-percent
        to: [{subset: canary, weight: 10}, {subset: stable, weight: 90}]
        sticky: {header: x-user-id}
  payments:
    subsets: {v1: {version: "^1"}, v2: {version: "^2"}}
    default: v1
    routes:
      - name: half
        to: [{subset: v2, weight: 50}, {subset: v1, weight: 50}]
"""
RULES_B = RULES_A.replace("weight: 10}, {subset: stable, weight: 90}", "weight: 50}, {subset: stable, weight: 50}")
