from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProofType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AuthorityRound: _ClassVar[ProofType]
    Raft: _ClassVar[ProofType]
    Bft: _ClassVar[ProofType]

class Cmd(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    Begin: _ClassVar[Cmd]
    Clear: _ClassVar[Cmd]
    Snapshot: _ClassVar[Cmd]
    Restore: _ClassVar[Cmd]
    End: _ClassVar[Cmd]
    Abort: _ClassVar[Cmd]

class Resp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BeginAck: _ClassVar[Resp]
    ClearAck: _ClassVar[Resp]
    SnapshotAck: _ClassVar[Resp]
    RestoreAck: _ClassVar[Resp]
    EndAck: _ClassVar[Resp]
    AbortAck: _ClassVar[Resp]
AuthorityRound: ProofType
Raft: ProofType
Bft: ProofType
Begin: Cmd
Clear: Cmd
Snapshot: Cmd
Restore: Cmd
End: Cmd
Abort: Cmd
BeginAck: Resp
ClearAck: Resp
SnapshotAck: Resp
RestoreAck: Resp
EndAck: Resp
AbortAck: Resp

class Proof(_message.Message):
    __slots__ = ("content", "type")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    type: ProofType
    def __init__(self, content: _Optional[bytes] = ..., type: _Optional[_Union[ProofType, str]] = ...) -> None: ...

class SnapshotReq(_message.Message):
    __slots__ = ("cmd", "start_height", "end_height", "file", "proof", "request_id", "directory", "trusted_block_hash", "timeout_ms", "block_hash", "state_root")
    CMD_FIELD_NUMBER: _ClassVar[int]
    START_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    END_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_ROOT_FIELD_NUMBER: _ClassVar[int]
    cmd: Cmd
    start_height: int
    end_height: int
    file: str
    proof: Proof
    request_id: str
    directory: str
    trusted_block_hash: bytes
    timeout_ms: int
    block_hash: bytes
    state_root: bytes
    def __init__(self, cmd: _Optional[_Union[Cmd, str]] = ..., start_height: _Optional[int] = ..., end_height: _Optional[int] = ..., file: _Optional[str] = ..., proof: _Optional[_Union[Proof, _Mapping]] = ..., request_id: _Optional[str] = ..., directory: _Optional[str] = ..., trusted_block_hash: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., block_hash: _Optional[bytes] = ..., state_root: _Optional[bytes] = ...) -> None: ...

class SnapshotResp(_message.Message):
    __slots__ = ("resp", "proof", "height", "flag", "request_id", "service", "error", "block_hash", "state_root", "file", "file_size")
    RESP_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_ROOT_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    resp: Resp
    proof: Proof
    height: int
    flag: bool
    request_id: str
    service: str
    error: str
    block_hash: bytes
    state_root: bytes
    file: str
    file_size: int
    def __init__(self, resp: _Optional[_Union[Resp, str]] = ..., proof: _Optional[_Union[Proof, _Mapping]] = ..., height: _Optional[int] = ..., flag: _Optional[bool] = ..., request_id: _Optional[str] = ..., service: _Optional[str] = ..., error: _Optional[str] = ..., block_hash: _Optional[bytes] = ..., state_root: _Optional[bytes] = ..., file: _Optional[str] = ..., file_size: _Optional[int] = ...) -> None: ...

class SnapshotProgress(_message.Message):
    __slots__ = ("request_id", "service", "phase", "chunks_done", "chunks_total", "bytes_done", "accounts", "blocks")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    service: str
    phase: str
    chunks_done: int
    chunks_total: int
    bytes_done: int
    accounts: int
    blocks: int
    def __init__(self, request_id: _Optional[str] = ..., service: _Optional[str] = ..., phase: _Optional[str] = ..., chunks_done: _Optional[int] = ..., chunks_total: _Optional[int] = ..., bytes_done: _Optional[int] = ..., accounts: _Optional[int] = ..., blocks: _Optional[int] = ...) -> None: ...

class RichStatus(_message.Message):
    __slots__ = ("height", "hash", "state_root", "timestamp", "genesis_hash", "proof", "flight_mode")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_ROOT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    GENESIS_HASH_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    FLIGHT_MODE_FIELD_NUMBER: _ClassVar[int]
    height: int
    hash: bytes
    state_root: bytes
    timestamp: int
    genesis_hash: bytes
    proof: Proof
    flight_mode: bool
    def __init__(self, height: _Optional[int] = ..., hash: _Optional[bytes] = ..., state_root: _Optional[bytes] = ..., timestamp: _Optional[int] = ..., genesis_hash: _Optional[bytes] = ..., proof: _Optional[_Union[Proof, _Mapping]] = ..., flight_mode: _Optional[bool] = ...) -> None: ...

class TxKey(_message.Message):
    __slots__ = ("hash", "sender", "nonce", "valid_until_block")
    HASH_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_BLOCK_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    sender: bytes
    nonce: int
    valid_until_block: int
    def __init__(self, hash: _Optional[bytes] = ..., sender: _Optional[bytes] = ..., nonce: _Optional[int] = ..., valid_until_block: _Optional[int] = ...) -> None: ...

class NewBlock(_message.Message):
    __slots__ = ("height", "hash", "txs")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    TXS_FIELD_NUMBER: _ClassVar[int]
    height: int
    hash: bytes
    txs: _containers.RepeatedCompositeFieldContainer[TxKey]
    def __init__(self, height: _Optional[int] = ..., hash: _Optional[bytes] = ..., txs: _Optional[_Iterable[_Union[TxKey, _Mapping]]] = ...) -> None: ...

class NewTxBatch(_message.Message):
    __slots__ = ("raw_txs",)
    RAW_TXS_FIELD_NUMBER: _ClassVar[int]
    raw_txs: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, raw_txs: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TxResult(_message.Message):
    __slots__ = ("tx_hash", "ok", "code", "error")
    TX_HASH_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    tx_hash: bytes
    ok: bool
    code: int
    error: str
    def __init__(self, tx_hash: _Optional[bytes] = ..., ok: _Optional[bool] = ..., code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class TxResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TxResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TxResult, _Mapping]]] = ...) -> None: ...

class BlockTxsReq(_message.Message):
    __slots__ = ("height", "max_count", "quota_limit")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUOTA_LIMIT_FIELD_NUMBER: _ClassVar[int]
    height: int
    max_count: int
    quota_limit: int
    def __init__(self, height: _Optional[int] = ..., max_count: _Optional[int] = ..., quota_limit: _Optional[int] = ...) -> None: ...

class BlockTxs(_message.Message):
    __slots__ = ("height", "raw_txs", "senders")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RAW_TXS_FIELD_NUMBER: _ClassVar[int]
    SENDERS_FIELD_NUMBER: _ClassVar[int]
    height: int
    raw_txs: _containers.RepeatedScalarFieldContainer[bytes]
    senders: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, height: _Optional[int] = ..., raw_txs: _Optional[_Iterable[bytes]] = ..., senders: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BlockProposal(_message.Message):
    __slots__ = ("block", "senders")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    SENDERS_FIELD_NUMBER: _ClassVar[int]
    block: bytes
    senders: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, block: _Optional[bytes] = ..., senders: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ExecutedResult(_message.Message):
    __slots__ = ("height", "proposal_hash", "state_root", "receipts_root", "quota_used", "log_bloom", "receipts", "error")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_ROOT_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_ROOT_FIELD_NUMBER: _ClassVar[int]
    QUOTA_USED_FIELD_NUMBER: _ClassVar[int]
    LOG_BLOOM_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    height: int
    proposal_hash: bytes
    state_root: bytes
    receipts_root: bytes
    quota_used: int
    log_bloom: bytes
    receipts: _containers.RepeatedScalarFieldContainer[bytes]
    error: str
    def __init__(self, height: _Optional[int] = ..., proposal_hash: _Optional[bytes] = ..., state_root: _Optional[bytes] = ..., receipts_root: _Optional[bytes] = ..., quota_used: _Optional[int] = ..., log_bloom: _Optional[bytes] = ..., receipts: _Optional[_Iterable[bytes]] = ..., error: _Optional[str] = ...) -> None: ...

class BlockWithProof(_message.Message):
    __slots__ = ("block", "proof", "receipts")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    block: bytes
    proof: Proof
    receipts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, block: _Optional[bytes] = ..., proof: _Optional[_Union[Proof, _Mapping]] = ..., receipts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SyncReq(_message.Message):
    __slots__ = ("start_height", "end_height")
    START_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    END_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    start_height: int
    end_height: int
    def __init__(self, start_height: _Optional[int] = ..., end_height: _Optional[int] = ...) -> None: ...

class SyncResp(_message.Message):
    __slots__ = ("blocks", "tip")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TIP_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedScalarFieldContainer[bytes]
    tip: int
    def __init__(self, blocks: _Optional[_Iterable[bytes]] = ..., tip: _Optional[int] = ...) -> None: ...

class RecentTxsReq(_message.Message):
    __slots__ = ("blocks",)
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    def __init__(self, blocks: _Optional[int] = ...) -> None: ...

class RecentTxs(_message.Message):
    __slots__ = ("height", "txs")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TXS_FIELD_NUMBER: _ClassVar[int]
    height: int
    txs: _containers.RepeatedCompositeFieldContainer[TxKey]
    def __init__(self, height: _Optional[int] = ..., txs: _Optional[_Iterable[_Union[TxKey, _Mapping]]] = ...) -> None: ...

class RpcRequest(_message.Message):
    __slots__ = ("method", "params_json")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    method: str
    params_json: str
    def __init__(self, method: _Optional[str] = ..., params_json: _Optional[str] = ...) -> None: ...

class RpcResponse(_message.Message):
    __slots__ = ("code", "result_json", "error")
    CODE_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    code: int
    result_json: str
    error: str
    def __init__(self, code: _Optional[int] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    def __init__(self, nonce: _Optional[str] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce", "service", "status_json")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    service: str
    status_json: str
    def __init__(self, nonce: _Optional[str] = ..., service: _Optional[str] = ..., status_json: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("request_id", "origin", "timestamp_ms", "snapshot_req", "snapshot_resp", "snapshot_progress", "rich_status", "new_block", "new_tx_batch", "tx_response", "block_txs_req", "block_txs", "block_proposal", "executed_result", "block_with_proof", "sync_req", "sync_resp", "recent_txs_req", "recent_txs", "rpc_request", "rpc_response", "ping", "pong", "chain_query", "executor_query")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REQ_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_RESP_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RICH_STATUS_FIELD_NUMBER: _ClassVar[int]
    NEW_BLOCK_FIELD_NUMBER: _ClassVar[int]
    NEW_TX_BATCH_FIELD_NUMBER: _ClassVar[int]
    TX_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TXS_REQ_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TXS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_RESULT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_WITH_PROOF_FIELD_NUMBER: _ClassVar[int]
    SYNC_REQ_FIELD_NUMBER: _ClassVar[int]
    SYNC_RESP_FIELD_NUMBER: _ClassVar[int]
    RECENT_TXS_REQ_FIELD_NUMBER: _ClassVar[int]
    RECENT_TXS_FIELD_NUMBER: _ClassVar[int]
    RPC_REQUEST_FIELD_NUMBER: _ClassVar[int]
    RPC_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    CHAIN_QUERY_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_QUERY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    origin: str
    timestamp_ms: int
    snapshot_req: SnapshotReq
    snapshot_resp: SnapshotResp
    snapshot_progress: SnapshotProgress
    rich_status: RichStatus
    new_block: NewBlock
    new_tx_batch: NewTxBatch
    tx_response: TxResponse
    block_txs_req: BlockTxsReq
    block_txs: BlockTxs
    block_proposal: BlockProposal
    executed_result: ExecutedResult
    block_with_proof: BlockWithProof
    sync_req: SyncReq
    sync_resp: SyncResp
    recent_txs_req: RecentTxsReq
    recent_txs: RecentTxs
    rpc_request: RpcRequest
    rpc_response: RpcResponse
    ping: Ping
    pong: Pong
    chain_query: RpcRequest
    executor_query: RpcRequest
    def __init__(self, request_id: _Optional[str] = ..., origin: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., snapshot_req: _Optional[_Union[SnapshotReq, _Mapping]] = ..., snapshot_resp: _Optional[_Union[SnapshotResp, _Mapping]] = ..., snapshot_progress: _Optional[_Union[SnapshotProgress, _Mapping]] = ..., rich_status: _Optional[_Union[RichStatus, _Mapping]] = ..., new_block: _Optional[_Union[NewBlock, _Mapping]] = ..., new_tx_batch: _Optional[_Union[NewTxBatch, _Mapping]] = ..., tx_response: _Optional[_Union[TxResponse, _Mapping]] = ..., block_txs_req: _Optional[_Union[BlockTxsReq, _Mapping]] = ..., block_txs: _Optional[_Union[BlockTxs, _Mapping]] = ..., block_proposal: _Optional[_Union[BlockProposal, _Mapping]] = ..., executed_result: _Optional[_Union[ExecutedResult, _Mapping]] = ..., block_with_proof: _Optional[_Union[BlockWithProof, _Mapping]] = ..., sync_req: _Optional[_Union[SyncReq, _Mapping]] = ..., sync_resp: _Optional[_Union[SyncResp, _Mapping]] = ..., recent_txs_req: _Optional[_Union[RecentTxsReq, _Mapping]] = ..., recent_txs: _Optional[_Union[RecentTxs, _Mapping]] = ..., rpc_request: _Optional[_Union[RpcRequest, _Mapping]] = ..., rpc_response: _Optional[_Union[RpcResponse, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., chain_query: _Optional[_Union[RpcRequest, _Mapping]] = ..., executor_query: _Optional[_Union[RpcRequest, _Mapping]] = ...) -> None: ...
