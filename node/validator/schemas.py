"""The bodies the validator API answers with, as models: what /openapi.json shows (node/validator/openapi.py).

They describe the answers the handlers build from the ledger (node/validator/api.py); requests are
validated by their own types (node/protocol/bundle.py `BundleBody`, node/protocol/worker_messages.py).
Query and path parameters are typed here too, next to the bounds the handlers enforce.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from node.protocol.wire_types import ADDRESS_PATTERN, HEX32_PATTERN

MAX_PAGE = 500

JobStatus = Literal["awaiting_bundle", "queued", "validating", "done"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
JobId = Annotated[str, Field(pattern=HEX32_PATTERN)]
AddressText = Annotated[str, Field(pattern=ADDRESS_PATTERN)]
MAX_OFFSET = 10**9
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE)]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET)]
Epoch = Annotated[int, Field(ge=1)]
Wei = Annotated[str, Field(pattern=r"^[0-9]+$", description="an integer amount of wei, as a decimal string")]


class _Open(BaseModel):
    """An answer may grow fields: clients ignore the ones they do not know."""

    model_config = ConfigDict(extra="allow")


class Accepted(_Open):
    """A bundle stored and queued for validation."""

    job_id: JobId
    status: str


class Verdict(_Open):
    outcome: Literal["accepted", "blamed", "soft_invalidated"] | None = None
    blamed_stage: int | None = None
    reason: str | None = None
    rewards_wei: list[Wei] = []
    slash_wei: Wei | None = None
    replayed: bool | None = None
    why: str | None = Field(None, description="a slash's one line from the verifier: which chunk failed, by how much")


class Job(_Open):
    job_id: JobId
    status: JobStatus
    model_id: JobId | None = None
    group_id: str | None = None
    stages: list[dict[str, Any]] = []
    verdict: Verdict | None = None


class Evidence(_Open):
    """Everything needed to recompute a verdict (I5): `stagewise verify-evidence FILE`."""

    version: int
    model_id: str
    bundle: dict[str, Any]
    verdict: dict[str, Any]


class RewardProof(_Open):
    epoch: int
    worker: AddressText
    cumulative: Annotated[str, Field(description="wei, decimal")]
    proof: list[str]
    rewards_root: str


class Items(_Open):
    items: list[Any]


class Page(_Open):
    """A page of a longer list: `offset` rows skipped, at most `limit` returned, `total` in all."""

    items: list[Any]
    total: int
    offset: int
    limit: int


class SeriesBucket(_Open):
    start_ms: int
    jobs: int
    tokens: int
    tokens_per_s: float
    rewards_wei: Wei
    reward_entries: int
    slashes: int
    slashed_wei: Wei


class Series(_Open):
    """The journal over time: one bucket per `bucket_s` seconds that had a reward or a slash, oldest first."""

    bucket_s: int
    items: list[SeriesBucket]


class Claimable(_Open):
    """`cumulative_wei` is what a claim with epoch `epoch`'s root carries (the contract pays it less what it paid
    before); `pending_wei` was earned since and is claimable once the next epoch closes."""

    worker: AddressText
    epoch: int | None
    cumulative_wei: Wei
    pending_wei: Wei


class Health(_Open):
    status: Literal["ok", "degraded"]


class Progress(_Open):
    running: bool


class WorkerAssignment(_Open):
    """Where a worker stands: `spare`, or `assigned` to a stage of a group (and that stage's layers)."""

    address: AddressText
    model_id: str
    status: Literal["assigned", "spare"]
    group_id: str | None = None
    stage_index: int | None = None
    layer_start: int | None = None
    layer_end: int | None = None
    group: dict[str, Any] | None = None


class RegisteredWorker(_Open):
    worker: dict[str, Any]
    assignment: WorkerAssignment


class Left(_Open):
    address: AddressText
    left: Literal[True]


class Groups(_Open):
    model_id: str
    num_layers: int
    groups: list[dict[str, Any]]
    spares: list[str]
    workers: list[dict[str, Any]]
    standing_by: str | None = None  # who orchestrates while this validator process stands by
    models: list[str] = []  # every model this validator orchestrates (?model_id= picks one; the first by default)


class CosignRequest(_Open):
    """A peer validator's slash or anchor order to judge and co-sign (PROTOCOL I7): the order as typed data,
    the proposer's API URL (one of this node's --peer URLs: what is judged is fetched from there only) and,
    for a slash, the job whose evidence it rests on."""

    order: dict[str, Any]
    proposer: str
    job_id: JobId | None = None


class Cosigned(_Open):
    """This validator's EIP-712 signature of the order (65 bytes r || s || v, low s)."""

    signer: AddressText
    signature: str
    order: dict[str, Any]


class EpochEntries(_Open):
    """A closed epoch's journal entries in full, and the cumulative rewards the epoch before it closed with:
    what a co-signer recomputes the epoch's roots from."""

    epoch: int
    entries: list[dict[str, Any]]
    previous_cumulative: dict[str, Wei]
