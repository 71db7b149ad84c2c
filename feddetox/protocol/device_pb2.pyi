from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrolRequest(_message.Message):
    __slots__ = ("enrolment_token", "device_name", "platform", "client_version")
    ENROLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    enrolment_token: str
    device_name: str
    platform: str
    client_version: str
    def __init__(self, enrolment_token: _Optional[str] = ..., device_name: _Optional[str] = ..., platform: _Optional[str] = ..., client_version: _Optional[str] = ...) -> None: ...

class EnrolResponse(_message.Message):
    __slots__ = ("device_id", "device_secret")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECRET_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    device_secret: str
    def __init__(self, device_id: _Optional[str] = ..., device_secret: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("server_time_unix_ms", "poll_interval_s")
    SERVER_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    POLL_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    server_time_unix_ms: int
    poll_interval_s: int
    def __init__(self, server_time_unix_ms: _Optional[int] = ..., poll_interval_s: _Optional[int] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("model_sha256", "guardian_ids")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    GUARDIAN_IDS_FIELD_NUMBER: _ClassVar[int]
    model_sha256: _containers.RepeatedScalarFieldContainer[str]
    guardian_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_sha256: _Optional[_Iterable[str]] = ..., guardian_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LoraSpec(_message.Message):
    __slots__ = ("r", "alpha", "dropout", "target_modules")
    R_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    r: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, r: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("beta", "learning_rate", "local_steps", "batch_size", "grad_accumulation", "max_prompt_tokens", "max_response_tokens", "seed")
    BETA_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAD_ACCUMULATION_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    beta: float
    learning_rate: float
    local_steps: int
    batch_size: int
    grad_accumulation: int
    max_prompt_tokens: int
    max_response_tokens: int
    seed: int
    def __init__(self, beta: _Optional[float] = ..., learning_rate: _Optional[float] = ..., local_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., grad_accumulation: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., max_response_tokens: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class AdapterRef(_message.Message):
    __slots__ = ("version", "sha256", "size_bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    version: int
    sha256: str
    size_bytes: int
    def __init__(self, version: _Optional[int] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("run_id", "round_index", "assignment_id", "base_model", "base_model_sha256", "lora", "training", "global_adapter", "guardian_id", "guardian_threshold", "sanitization_policy", "deadline_unix_ms")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    GUARDIAN_ID_FIELD_NUMBER: _ClassVar[int]
    GUARDIAN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SANITIZATION_POLICY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round_index: int
    assignment_id: str
    base_model: str
    base_model_sha256: str
    lora: LoraSpec
    training: TrainingSpec
    global_adapter: AdapterRef
    guardian_id: str
    guardian_threshold: float
    sanitization_policy: str
    deadline_unix_ms: int
    def __init__(self, run_id: _Optional[str] = ..., round_index: _Optional[int] = ..., assignment_id: _Optional[str] = ..., base_model: _Optional[str] = ..., base_model_sha256: _Optional[str] = ..., lora: _Optional[_Union[LoraSpec, _Mapping]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., global_adapter: _Optional[_Union[AdapterRef, _Mapping]] = ..., guardian_id: _Optional[str] = ..., guardian_threshold: _Optional[float] = ..., sanitization_policy: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("has_task", "task", "retry_after_s")
    HAS_TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    has_task: bool
    task: Task
    retry_after_s: int
    def __init__(self, has_task: _Optional[bool] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., retry_after_s: _Optional[int] = ...) -> None: ...

class DownloadAdapterRequest(_message.Message):
    __slots__ = ("run_id", "version", "offset")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    version: int
    offset: int
    def __init__(self, run_id: _Optional[str] = ..., version: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class SanitizationCounts(_message.Message):
    __slots__ = ("pairs_seen", "flagged", "replaced", "dropped", "score_histogram")
    PAIRS_SEEN_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SCORE_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    pairs_seen: int
    flagged: int
    replaced: int
    dropped: int
    score_histogram: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pairs_seen: _Optional[int] = ..., flagged: _Optional[int] = ..., replaced: _Optional[int] = ..., dropped: _Optional[int] = ..., score_histogram: _Optional[_Iterable[int]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("idempotency_key", "run_id", "round_index", "assignment_id", "num_examples", "size_bytes", "sha256", "base_adapter_version", "metrics", "sanitization")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BASE_ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SANITIZATION_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    run_id: str
    round_index: int
    assignment_id: str
    num_examples: int
    size_bytes: int
    sha256: str
    base_adapter_version: int
    metrics: _containers.ScalarMap[str, float]
    sanitization: SanitizationCounts
    def __init__(self, idempotency_key: _Optional[str] = ..., run_id: _Optional[str] = ..., round_index: _Optional[int] = ..., assignment_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., base_adapter_version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., sanitization: _Optional[_Union[SanitizationCounts, _Mapping]] = ...) -> None: ...

class UploadUpdateRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("update_id", "sha256", "duplicate")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    sha256: str
    duplicate: bool
    def __init__(self, update_id: _Optional[str] = ..., sha256: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class MetricsReport(_message.Message):
    __slots__ = ("run_id", "round_index", "assignment_id", "metrics", "sanitization")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SANITIZATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round_index: int
    assignment_id: str
    metrics: _containers.ScalarMap[str, float]
    sanitization: SanitizationCounts
    def __init__(self, run_id: _Optional[str] = ..., round_index: _Optional[int] = ..., assignment_id: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., sanitization: _Optional[_Union[SanitizationCounts, _Mapping]] = ...) -> None: ...

class MetricsAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
