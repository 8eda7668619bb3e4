from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    TRAIN: _ClassVar[TaskType]
    VALIDATE: _ClassVar[TaskType]

class TaskPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_PHASE_UNSPECIFIED: _ClassVar[TaskPhase]
    PHASE_DOWNLOADING: _ClassVar[TaskPhase]
    PHASE_TRAINING: _ClassVar[TaskPhase]
    PHASE_UPLOADING: _ClassVar[TaskPhase]
    PHASE_VALIDATING: _ClassVar[TaskPhase]

class RoundKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_KIND_UNSPECIFIED: _ClassVar[RoundKind]
    TRAINING: _ClassVar[RoundKind]
    VALIDATION: _ClassVar[RoundKind]
TASK_TYPE_UNSPECIFIED: TaskType
TRAIN: TaskType
VALIDATE: TaskType
TASK_PHASE_UNSPECIFIED: TaskPhase
PHASE_DOWNLOADING: TaskPhase
PHASE_TRAINING: TaskPhase
PHASE_UPLOADING: TaskPhase
PHASE_VALIDATING: TaskPhase
ROUND_KIND_UNSPECIFIED: RoundKind
TRAINING: RoundKind
VALIDATION: RoundKind

class Ack(_message.Message):
    __slots__ = ("ok", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("client_name", "version")
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    version: str
    def __init__(self, client_name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("combiner_name", "heartbeat_interval_s", "heartbeat_timeout_s")
    COMBINER_NAME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    combiner_name: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    def __init__(self, combiner_name: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., heartbeat_timeout_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("client_name",)
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    def __init__(self, client_name: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known", "next_interval_s")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    NEXT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    known: bool
    next_interval_s: float
    def __init__(self, known: _Optional[bool] = ..., next_interval_s: _Optional[float] = ...) -> None: ...

class TaskStreamRequest(_message.Message):
    __slots__ = ("client_name",)
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    def __init__(self, client_name: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "type", "session_id", "round_id", "model_id", "config_json", "round_number")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ROUND_NUMBER_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: TaskType
    session_id: str
    round_id: str
    model_id: str
    config_json: str
    round_number: int
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[_Union[TaskType, str]] = ..., session_id: _Optional[str] = ..., round_id: _Optional[str] = ..., model_id: _Optional[str] = ..., config_json: _Optional[str] = ..., round_number: _Optional[int] = ...) -> None: ...

class ModelUpdate(_message.Message):
    __slots__ = ("client_name", "task_id", "round_id", "model_id", "parent_model_id", "num_examples", "metadata_json", "timings")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    task_id: str
    round_id: str
    model_id: str
    parent_model_id: str
    num_examples: int
    metadata_json: str
    timings: _containers.ScalarMap[str, float]
    def __init__(self, client_name: _Optional[str] = ..., task_id: _Optional[str] = ..., round_id: _Optional[str] = ..., model_id: _Optional[str] = ..., parent_model_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., metadata_json: _Optional[str] = ..., timings: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ValidationReport(_message.Message):
    __slots__ = ("client_name", "task_id", "round_id", "model_id", "num_examples", "metrics_json", "timings")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    task_id: str
    round_id: str
    model_id: str
    num_examples: int
    metrics_json: str
    timings: _containers.ScalarMap[str, float]
    def __init__(self, client_name: _Optional[str] = ..., task_id: _Optional[str] = ..., round_id: _Optional[str] = ..., model_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics_json: _Optional[str] = ..., timings: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TaskFailure(_message.Message):
    __slots__ = ("client_name", "task_id", "round_id", "error")
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    task_id: str
    round_id: str
    error: str
    def __init__(self, client_name: _Optional[str] = ..., task_id: _Optional[str] = ..., round_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("client_name", "task_id", "round_id", "phase")
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    task_id: str
    round_id: str
    phase: TaskPhase
    def __init__(self, client_name: _Optional[str] = ..., task_id: _Optional[str] = ..., round_id: _Optional[str] = ..., phase: _Optional[_Union[TaskPhase, str]] = ...) -> None: ...

class TransferHeader(_message.Message):
    __slots__ = ("model_id", "size", "client_name", "sha256_follows")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FOLLOWS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    size: int
    client_name: str
    sha256_follows: bool
    def __init__(self, model_id: _Optional[str] = ..., size: _Optional[int] = ..., client_name: _Optional[str] = ..., sha256_follows: _Optional[bool] = ...) -> None: ...

class TransferTrailer(_message.Message):
    __slots__ = ("sha256", "xxh3")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    XXH3_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    xxh3: str
    def __init__(self, sha256: _Optional[str] = ..., xxh3: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "data", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: TransferHeader
    data: bytes
    trailer: TransferTrailer
    def __init__(self, header: _Optional[_Union[TransferHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., trailer: _Optional[_Union[TransferTrailer, _Mapping]] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("model_id", "size", "sha256", "xxh3")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    XXH3_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    size: int
    sha256: str
    xxh3: str
    def __init__(self, model_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., xxh3: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("model_id", "client_name")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    client_name: str
    def __init__(self, model_id: _Optional[str] = ..., client_name: _Optional[str] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("reducer_url", "config_json")
    REDUCER_URL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    reducer_url: str
    config_json: str
    def __init__(self, reducer_url: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class RoundRequest(_message.Message):
    __slots__ = ("session_id", "round_id", "kind", "model_id", "config_json", "round_number", "min_clients", "clients_requested", "wait_for_clients_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ROUND_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_CLIENTS_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round_id: str
    kind: RoundKind
    model_id: str
    config_json: str
    round_number: int
    min_clients: int
    clients_requested: int
    wait_for_clients_s: float
    def __init__(self, session_id: _Optional[str] = ..., round_id: _Optional[str] = ..., kind: _Optional[_Union[RoundKind, str]] = ..., model_id: _Optional[str] = ..., config_json: _Optional[str] = ..., round_number: _Optional[int] = ..., min_clients: _Optional[int] = ..., clients_requested: _Optional[int] = ..., wait_for_clients_s: _Optional[float] = ...) -> None: ...

class ClientContribution(_message.Message):
    __slots__ = ("client_name", "num_examples", "metadata_json", "timings", "weight_used", "capped")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_USED_FIELD_NUMBER: _ClassVar[int]
    CAPPED_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    num_examples: int
    metadata_json: str
    timings: _containers.ScalarMap[str, float]
    weight_used: int
    capped: bool
    def __init__(self, client_name: _Optional[str] = ..., num_examples: _Optional[int] = ..., metadata_json: _Optional[str] = ..., timings: _Optional[_Mapping[str, float]] = ..., weight_used: _Optional[int] = ..., capped: _Optional[bool] = ...) -> None: ...

class RoundResult(_message.Message):
    __slots__ = ("round_id", "success", "error", "model_id", "num_examples", "updates", "validations", "failures", "timings", "clients")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    VALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    success: bool
    error: str
    model_id: str
    num_examples: int
    updates: _containers.RepeatedCompositeFieldContainer[ClientContribution]
    validations: _containers.RepeatedCompositeFieldContainer[ValidationReport]
    failures: _containers.RepeatedScalarFieldContainer[str]
    timings: _containers.ScalarMap[str, float]
    clients: _containers.RepeatedCompositeFieldContainer[ClientProgress]
    def __init__(self, round_id: _Optional[str] = ..., success: _Optional[bool] = ..., error: _Optional[str] = ..., model_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., updates: _Optional[_Iterable[_Union[ClientContribution, _Mapping]]] = ..., validations: _Optional[_Iterable[_Union[ValidationReport, _Mapping]]] = ..., failures: _Optional[_Iterable[str]] = ..., timings: _Optional[_Mapping[str, float]] = ..., clients: _Optional[_Iterable[_Union[ClientProgress, _Mapping]]] = ...) -> None: ...

class ClientProgress(_message.Message):
    __slots__ = ("client_name", "state", "state_for_s", "started", "ended", "detail")
    class StartedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FOR_S_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    state: str
    state_for_s: float
    started: _containers.ScalarMap[str, float]
    ended: float
    detail: str
    def __init__(self, client_name: _Optional[str] = ..., state: _Optional[str] = ..., state_for_s: _Optional[float] = ..., started: _Optional[_Mapping[str, float]] = ..., ended: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class RoundProgress(_message.Message):
    __slots__ = ("round_id", "kind", "elapsed_s", "clients")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    kind: RoundKind
    elapsed_s: float
    clients: _containers.RepeatedCompositeFieldContainer[ClientProgress]
    def __init__(self, round_id: _Optional[str] = ..., kind: _Optional[_Union[RoundKind, str]] = ..., elapsed_s: _Optional[float] = ..., clients: _Optional[_Iterable[_Union[ClientProgress, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientInfo(_message.Message):
    __slots__ = ("name", "active", "seconds_since_heartbeat", "rounds_joined")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_JOINED_FIELD_NUMBER: _ClassVar[int]
    name: str
    active: bool
    seconds_since_heartbeat: float
    rounds_joined: int
    def __init__(self, name: _Optional[str] = ..., active: _Optional[bool] = ..., seconds_since_heartbeat: _Optional[float] = ..., rounds_joined: _Optional[int] = ...) -> None: ...

class CombinerStatus(_message.Message):
    __slots__ = ("name", "clients", "round_in_progress", "last_model_id", "active_clients", "instance_id", "round")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    ROUND_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    name: str
    clients: _containers.RepeatedCompositeFieldContainer[ClientInfo]
    round_in_progress: str
    last_model_id: str
    active_clients: int
    instance_id: str
    round: RoundProgress
    def __init__(self, name: _Optional[str] = ..., clients: _Optional[_Iterable[_Union[ClientInfo, _Mapping]]] = ..., round_in_progress: _Optional[str] = ..., last_model_id: _Optional[str] = ..., active_clients: _Optional[int] = ..., instance_id: _Optional[str] = ..., round: _Optional[_Union[RoundProgress, _Mapping]] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    def __init__(self, round_id: _Optional[str] = ...) -> None: ...

class AdoptRequest(_message.Message):
    __slots__ = ("model_id", "sha256", "size")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    sha256: str
    size: int
    def __init__(self, model_id: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...
