from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SayRequest(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class SayReply(_message.Message):
    __slots__ = ("service", "version", "instance", "lane", "seen_lane", "seen_pins", "seen_metadata", "text")
    class SeenPinsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SeenMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    SEEN_LANE_FIELD_NUMBER: _ClassVar[int]
    SEEN_PINS_FIELD_NUMBER: _ClassVar[int]
    SEEN_METADATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: str
    instance: str
    lane: str
    seen_lane: str
    seen_pins: _containers.ScalarMap[str, str]
    seen_metadata: _containers.ScalarMap[str, str]
    text: str
    def __init__(self, service: _Optional[str] = ..., version: _Optional[str] = ..., instance: _Optional[str] = ..., lane: _Optional[str] = ..., seen_lane: _Optional[str] = ..., seen_pins: _Optional[_Mapping[str, str]] = ..., seen_metadata: _Optional[_Mapping[str, str]] = ..., text: _Optional[str] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("count", "interval_ms")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    count: int
    interval_ms: int
    def __init__(self, count: _Optional[int] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class CountReply(_message.Message):
    __slots__ = ("service", "version", "instance", "lane", "seen_lane", "seen_pins", "seen_metadata", "seq")
    class SeenPinsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SeenMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    SEEN_LANE_FIELD_NUMBER: _ClassVar[int]
    SEEN_PINS_FIELD_NUMBER: _ClassVar[int]
    SEEN_METADATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: str
    instance: str
    lane: str
    seen_lane: str
    seen_pins: _containers.ScalarMap[str, str]
    seen_metadata: _containers.ScalarMap[str, str]
    seq: int
    def __init__(self, service: _Optional[str] = ..., version: _Optional[str] = ..., instance: _Optional[str] = ..., lane: _Optional[str] = ..., seen_lane: _Optional[str] = ..., seen_pins: _Optional[_Mapping[str, str]] = ..., seen_metadata: _Optional[_Mapping[str, str]] = ..., seq: _Optional[int] = ...) -> None: ...
