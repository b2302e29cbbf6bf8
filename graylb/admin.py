"""Operator actions on the rules document, whichever registry keeps it — what ``graylb rules
push / undo``, ``graylb rollback`` and ``graylb status`` run, for scripts and examples::

    from graylb.admin import push_change, rollback
    push_change(graylb.ConsulConfig("http://127.0.0.1:8500"), "graylb/rules", text)
    rollback(graylb.NacosConfig("http://127.0.0.1:8848"), "graylb-rules", "orders")

Each function takes a :class:`RuleStore` or a registry config (the matching store is opened
around the call): :class:`ConsulKVStore`, :class:`NacosConfigStore`, or
:class:`graylb.testing.MemoryRuleStore` in process.
"""

from .consul.admin import Change, ConsulKVStore, RuleConflict, RuleStore, push, push_change, rollback, status, undo
from .nacos.admin import NacosConfigStore

__all__ = ["Change", "ConsulKVStore", "NacosConfigStore", "RuleConflict", "RuleStore", "push", "push_change", "rollback", "status", "undo"]
