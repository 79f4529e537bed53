"""What `butler serve` answers, independent of the transport: `RepositoryService.handle` turns a
`Request` into an `Answer` using a read-only local Butler's public API.

The HTTP server (``_server.py``) and the ssh stdio loop (``_stdio.py``) are thin adapters over it.
The service never writes: it opens the repository read-only, and only calls reads. Files are named by
dataset id (``/api/v1/datasets/<id>/file``), so only files the registry records are served; a member of
a directory dataset (a zarr store's chunk) must be a plain relative path inside that directory.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import shutil
import sys
import tempfile
import traceback
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ButlerError, DatasetNotFoundError, RemoteAuthError, RemoteProtocolError
from ..registry._datasets import FoundDataset
from ._protocol import (
    API_PREFIX,
    MAX_INLINE_BYTES,
    PAYLOAD_HEADER,
    PROTOCOL_VERSION,
    REPORT_HEADER,
    Answer,
    Request,
    decode_data_id,
    decode_refs,
    encode_collection,
    encode_data_id,
    encode_dataset_type,
    encode_error,
    encode_files,
    encode_found,
    encode_provenance,
    encode_records,
    encode_refs,
    header,
    member_problem,
)

if TYPE_CHECKING:
    from .._butler import Butler

__all__ = ["RepositoryService"]

_JSON = {"Content-Type": "application/json"}


class RepositoryService:
    """The read-only answers of one repository (see the module docstring)."""

    def __init__(self, root: str, *, token: str | None = None) -> None:
        from .._butler import Butler

        self.butler: Butler = Butler(root)
        self.token = token
        self._calls: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            name[len("call_"):]: getattr(self, name) for name in dir(self) if name.startswith("call_")
        }

    # -- dispatch -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Answer:
        """The answer to ``request`` (errors become error answers; nothing raises)."""
        try:
            self._check_token(request.headers)
            path = request.path
            if not path.startswith(API_PREFIX + "/"):
                return _error(404, "RemoteProtocolError",
                              f"no such path {path!r}: this butler server answers {API_PREFIX}/... (protocol "
                              f"version {PROTOCOL_VERSION})")
            rest = path[len(API_PREFIX) + 1:]
            if rest.startswith("datasets/") and request.method in ("GET", "HEAD"):
                return self._file(rest, request.query)
            if request.method == "GET" and rest == "info":
                return _json_answer(self.call_info({}))
            call = self._calls.get(rest)
            if call is None or request.method != "POST":
                return _error(404, "RemoteProtocolError",
                              f"no call {request.method} {path!r}; calls are POST {API_PREFIX}/<name> with "
                              f"<name> one of {sorted(self._calls)}")
            try:
                args = json.loads(request.body or b"{}")
            except ValueError as err:
                raise RemoteProtocolError(f"the body of {path} is not JSON: {err}") from None
            if not isinstance(args, dict):
                raise RemoteProtocolError(f"the body of {path} must be a JSON object of arguments")
            return _json_answer(call(args))
        except ButlerError as err:
            status, body = encode_error(err)
            return Answer(status, _JSON, json.dumps(body).encode())
        except (KeyError, TypeError, ValueError) as err:  # arguments of the wrong shape
            return _error(400, "RemoteProtocolError", f"bad arguments for {request.path}: {type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001 - the server answers, it does not die
            # The details (paths of the server, its code) go to the server's log, not to the client.
            traceback.print_exc(file=sys.stderr)
            return _error(500, "RemoteError", f"the server failed to answer {request.method} {request.path} "
                          f"({type(err).__name__}); its log has the details")

    def _check_token(self, headers: Mapping[str, str]) -> None:
        if self.token is None:
            return
        given = header(headers, "Authorization") or ""
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise RemoteAuthError("this butler server needs a bearer token (Authorization: Bearer ...) and the "
                                  "request has none or another: give it with token=... or $BUTLER_TOKEN")

    # -- files ----------------------------------------------------------------------------------
    def _file(self, rest: str, query: Mapping[str, str]) -> Answer:
        parts = rest.split("/", 3)
        if len(parts) == 4 and parts[2] == "store":  # a store's member as a path: what zarr's HTTP store asks for
            query = {**query, "member": parts[3]}
            parts = parts[:2] + ["file"]
        if len(parts) != 3 or parts[2] != "file":
            return _error(404, "RemoteProtocolError", f"no such path {API_PREFIX}/{rest}; files are "
                          f"{API_PREFIX}/datasets/<id>/file?component=...&member=... (or .../store/<member>)")
        try:
            dataset_id = uuid.UUID(hex=parts[1])
        except ValueError:
            return _error(400, "RemoteProtocolError", f"{parts[1]!r} is not a dataset id (32 hex digits)")
        files = self.butler.reader.files_of([dataset_id]).get(dataset_id)
        if files is None:
            return _error(404, "DatasetNotFoundError", f"no dataset with id {dataset_id} in this repository")
        component = query.get("component", "")
        record = next((f for f in files if f.component == component), None)
        if record is None:
            return _error(404, "DatasetNotFoundError",
                          f"the dataset {dataset_id} has no file of component {component!r} (it has "
                          f"{sorted(f.component for f in files)})")
        path = self.butler.datastore_reader.abspath(record.path)
        member = query.get("member")
        headers = {"Content-Type": "application/octet-stream"}
        if member is not None:
            problem = member_problem(member)
            if problem is not None:
                return _error(400, "RemoteProtocolError", f"the member {member!r} {problem}: members are relative "
                              "paths inside the dataset's directory")
            if not os.path.isdir(path):
                return _error(400, "RemoteProtocolError", f"the dataset {dataset_id} is a single file: ask without member=")
            base = os.path.realpath(path)
            full = os.path.realpath(os.path.join(base, *member.split("/")))
            if not full.startswith(base + os.sep) or not os.path.isfile(full):
                return _error(404, "DatasetNotFoundError", f"the dataset {dataset_id} has no member {member!r}")
            return Answer(200, headers, file=full)
        if os.path.isdir(path):
            return _error(400, "RemoteProtocolError", f"the dataset {dataset_id} is a directory (a store): ask for "
                          "one file of it with member=... (its manifest lists them)")
        if not os.path.isfile(path):
            return _error(404, "DatasetNotFoundError", f"the file of the dataset {dataset_id} is missing on the server")
        if record.checksum:
            headers["X-Butler-Checksum"] = record.checksum
        return Answer(200, headers, file=path)

    # -- calls: each takes the JSON arguments and returns JSON data --------------------------------
    def call_info(self, args: Mapping[str, Any]) -> dict[str, Any]:
        reader = self.butler.reader
        return {"protocol": PROTOCOL_VERSION, "server": "butler", "universe": reader.universe.text,
                "instruments": reader.instruments, "name": os.path.basename(self.butler.root.rstrip("/"))}

    def call_dataset_type(self, args: Mapping[str, Any]) -> Any:
        return encode_dataset_type(self.butler.reader.dataset_type(args["name"]))

    def call_query_dataset_types(self, args: Mapping[str, Any]) -> Any:
        return [encode_dataset_type(dt) for dt in self.butler.reader.query_dataset_types(args.get("pattern", "*"))]

    def call_collection(self, args: Mapping[str, Any]) -> Any:
        return encode_collection(self.butler.reader.collection(args["name"]))

    def call_query_collections(self, args: Mapping[str, Any]) -> Any:
        from ..registry._collections import CollectionType

        types = args.get("types")
        kinds = None if types is None else [CollectionType[t] for t in types]
        return [encode_collection(r) for r in self.butler.reader.query_collections(args.get("pattern", "*"), kinds)]

    def call_chain_children(self, args: Mapping[str, Any]) -> Any:
        return self.butler.reader.chain_children(args["name"])

    def call_resolve_collections(self, args: Mapping[str, Any]) -> Any:
        return [encode_collection(r) for r in self.butler.reader.resolve_collections(args["collections"])]

    def _data_id(self, dataset_type: str, data: Any) -> Any:
        reader = self.butler.reader
        return decode_data_id(reader.universe, reader.dataset_type(dataset_type).dimensions, data)

    def call_find_dataset(self, args: Mapping[str, Any]) -> Any:
        """The dataset and its file records; with ``inline`` (bytes), the files up to that size
        follow in the same answer, in the order of the records (a small ``get`` is one round trip)."""
        name = args["dataset_type"]
        found = self.butler.reader.find_dataset(name, self._data_id(name, args["data_id"]), args["collections"])
        encoded = encode_found(found)
        limit = min(int(args.get("inline") or 0), MAX_INLINE_BYTES)
        if found is None or limit <= 0:
            return encoded
        chunks, sizes = [], []
        for record in found.files:
            data = self._small_file(record, limit)
            sizes.append(None if data is None else len(data))
            if data is not None:
                chunks.append(data)
        assert encoded is not None
        encoded["inline"] = sizes
        return WithPayload(encoded, b"".join(chunks))

    def _small_file(self, record: Any, limit: int) -> bytes | None:
        """The bytes of a single file no larger than ``limit`` (None for a bigger file, a store or a missing one)."""
        if record.file_size is None or record.file_size > limit or str(record.checksum).startswith("manifest:"):
            return None
        try:
            with open(self.butler.datastore_reader.abspath(record.path), "rb") as stream:
                data = stream.read(limit + 1)
        except OSError:
            return None
        return data if len(data) <= limit else None

    def call_find_datasets(self, args: Mapping[str, Any]) -> Any:
        name = args["dataset_type"]
        coords = [self._data_id(name, d) for d in args["data_ids"]]
        found = self.butler.reader.find_datasets(name, coords, args["collections"])
        index = {c: i for i, c in enumerate(coords)}
        refs = list(found.values())
        return {"keys": [index[c] for c in found], **encode_refs(refs)}

    def call_files_of(self, args: Mapping[str, Any]) -> Any:
        ids = [uuid.UUID(hex=h) for h in args["ids"]]
        return {i.hex: encode_files(files) for i, files in self.butler.reader.files_of(ids).items()}

    def call_explain_not_found(self, args: Mapping[str, Any]) -> Any:
        name = args["dataset_type"]
        return self.butler.reader.explain_not_found(name, self._data_id(name, args["data_id"]), args["collections"])

    def call_query_datasets(self, args: Mapping[str, Any]) -> Any:
        refs = self.butler.reader.query_datasets(
            args["dataset_type"], collections=args["collections"], where=args.get("where"), bind=args.get("bind"),
            data_id=args.get("data_id"), find_first=args.get("find_first"), **args.get("kwargs", {}))
        return encode_refs(refs)

    def call_query_data_ids(self, args: Mapping[str, Any]) -> Any:
        coords = self.butler.reader.query_data_ids(
            args["dimensions"], where=args.get("where"), bind=args.get("bind"), data_id=args.get("data_id"),
            datasets=args.get("datasets"), collections=args.get("collections"), **args.get("kwargs", {}))
        groups: dict[Any, list[Any]] = {}
        for coord in coords:
            groups.setdefault(coord.group, []).append(encode_data_id(coord))
        return [{"dimensions": list(group.required), "rows": rows} for group, rows in groups.items()]

    def call_query_dimension_records(self, args: Mapping[str, Any]) -> Any:
        reader = self.butler.reader
        element = args["element"]
        records = reader.query_dimension_records(element, where=args.get("where"), bind=args.get("bind"),
                                                 data_id=args.get("data_id"), **args.get("kwargs", {}))
        return encode_records(element, records, reader.universe)

    def call_export(self, args: Mapping[str, Any]) -> Any:
        """A zip bundle (see docs/transfers.md) of the datasets ``refs`` (``[[type, id], ...]``) with
        their files, records, collections and provenance: what a client caching them imports. The
        answer is the bundle's file, removed once sent."""
        from ..transfer._export import SelectedDataset

        pairs = dict.fromkeys((str(name), uuid.UUID(hex=h)) for name, h in args["refs"])  # each once
        wanted: list[SelectedDataset] = [_Selected(name, dataset_id) for name, dataset_id in pairs]
        if not wanted:
            raise RemoteProtocolError("export needs at least one ref")
        scratch = tempfile.mkdtemp(prefix="butler-serve-export-")
        path = os.path.join(scratch, "bundle.zip")
        try:
            report = self.butler.export(path, refs=wanted)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        if report.datasets != len(wanted):
            shutil.rmtree(scratch, ignore_errors=True)
            raise DatasetNotFoundError(f"{len(wanted) - report.datasets} of the {len(wanted)} datasets asked for are "
                                       "not in this repository (removed since they were found?)")
        summary = {k: v for k, v in dataclasses.asdict(report).items() if k != "path"}
        return FileAnswer(path, remove_dir=scratch, headers={REPORT_HEADER: json.dumps(summary, separators=(",", ":"))})

    def call_provenance(self, args: Mapping[str, Any]) -> Any:
        (ref,) = decode_refs(self.butler.reader.universe, args["ref"])
        return encode_provenance(self.butler.provenance(ref))

    def call_query_provenance(self, args: Mapping[str, Any]) -> Any:
        records = self.butler.query_provenance(run=args.get("run"), task=args.get("task"), status=args.get("status"))
        return [encode_provenance(r) for r in records]

    def call_recorded_inputs(self, args: Mapping[str, Any]) -> Any:
        return self.butler.recorded_inputs(decode_refs(self.butler.reader.universe, args["refs"]))

    def call_observation_times(self, args: Mapping[str, Any]) -> Any:
        found = self.butler.observation_times(args["element"], [(str(i), int(n)) for i, n in args["keys"]])
        return [[instrument, number, values] for (instrument, number), values in found.items()]

    def call_find_calibration(self, args: Mapping[str, Any]) -> Any:
        """The calibration dataset valid for a data ID (its observation, or ``time`` ns) in collections."""
        ref = self.butler.find_dataset(args["dataset_type"], args["data_id"], collections=args.get("collections"))
        if ref is None:
            return None
        files = self.butler.reader.files_of([ref.id]).get(ref.id, [])
        return encode_found(FoundDataset(ref, tuple(files)))

    def call_refresh(self, args: Mapping[str, Any]) -> Any:
        self.butler.refresh()
        return {"instruments": self.butler.reader.instruments}


class _Selected:
    """A dataset asked for by type name and id (what `export_bundle` needs of a ref)."""

    __slots__ = ("dataset_type", "id")

    def __init__(self, dataset_type: str, id: uuid.UUID) -> None:
        self.dataset_type = dataset_type
        self.id = id


class FileAnswer:
    """A call whose answer is a file made for it, removed (with ``remove_dir``) once sent."""

    __slots__ = ("headers", "path", "remove_dir")

    def __init__(self, path: str, remove_dir: str, headers: Mapping[str, str]) -> None:
        self.path = path
        self.remove_dir = remove_dir
        self.headers = dict(headers)


class WithPayload:
    """A call's JSON result followed by raw bytes in the same answer (see `PAYLOAD_HEADER`)."""

    __slots__ = ("payload", "result")

    def __init__(self, result: Any, payload: bytes) -> None:
        self.result = result
        self.payload = payload


def _json_answer(result: Any) -> Answer:
    if isinstance(result, FileAnswer):
        return Answer(200, {"Content-Type": "application/zip", **result.headers}, file=result.path,
                      remove_after=result.remove_dir)
    if isinstance(result, WithPayload):
        text = json.dumps({"result": result.result}, separators=(",", ":")).encode()
        return Answer(200, {**_JSON, PAYLOAD_HEADER: str(len(text))}, text + result.payload)
    return Answer(200, _JSON, json.dumps({"result": result}, separators=(",", ":")).encode())


def _error(status: int, name: str, message: str) -> Answer:
    return Answer(status, _JSON, json.dumps({"error": name, "message": message}).encode())
