"""Insert and read dimension records, converting times and regions at the boundary.

Times are stored as integer nanoseconds since the Unix epoch (UTC) and returned as aware
``datetime`` objects; regions are stored with lsst-sphgeom's binary encoding and returned as
sphgeom regions (imported only when a region is read or written).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from .._time import from_nsec, to_nsec
from ..dimensions import DimensionElement, DimensionRecord, DimensionUniverse, coerce_value
from ..errors import ConflictError, DataIdError, InvalidNameError
from ._database import Database
from ._schema import RegistrySchema
from ._spatial import RegionError, SpatialIndex, validate_region

__all__ = ["DimensionRecordManager", "decode_region", "encode_region"]


def encode_region(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    encode = getattr(value, "encode", None)
    if encode is None or type(value).__module__.split(".")[0] != "lsst":
        raise DataIdError(
            f"region must be an lsst.sphgeom region (ConvexPolygon, Circle, Box...), got {type(value).__name__}"
        )
    return bytes(encode())


def decode_region(data: bytes | None) -> Any:
    if data is None:
        return None
    from lsst.sphgeom import Region

    return Region.decode(data)


class DimensionRecordManager:
    """Validates, inserts and fetches records of dimension elements."""

    def __init__(self, db: Database, schema: RegistrySchema):
        self._db = db
        self._schema = schema
        self.universe: DimensionUniverse = schema.universe
        self._implied_statements: dict[str, sa.Select[*tuple[Any, ...]]] = {}
        self.spatial = SpatialIndex(self.universe, schema.skypix)

    # -- conversion -----------------------------------------------------------------------
    def to_row(self, element: DimensionElement, record: Mapping[str, Any]) -> dict[str, Any]:
        """Validate one user record and convert it to database column values."""
        types = element.field_types
        unknown = [k for k in record if k not in types]
        if "region" in unknown:
            spatial = [e.name for e in self.universe.spatial_elements]
            raise RegionError(f"{element.name} records have no region; elements with regions: {spatial}")
        if unknown:
            raise DataIdError(
                f"unknown field(s) {unknown} for {element.name} records; fields are {list(types)}"
            )
        row: dict[str, Any] = {}
        # Implied values are required: a visit without its day_obs would be in the registry but
        # invisible to every query that relates visits to days (their join would drop it).
        nullable = {f.name for f in element.fields if f.nullable}
        lengths = {f.name: f.length for f in element.fields if f.type == "str" and f.length}
        key_lengths = _key_lengths(element)
        if element.spatial:
            nullable.add("region")
        for name, kind in types.items():
            if name not in record or record[name] is None:
                if name not in nullable:
                    raise DataIdError(f"{element.name} record {dict(record)} is missing required field {name!r}")
                row[name] = None
                continue
            value = record[name]
            if name in element.primary_key_columns or name in element.implies:
                row[name] = value = coerce_value(f"{element.name}.{name}", kind, value)
                if name in key_lengths and len(value) > key_lengths[name]:
                    raise InvalidNameError(
                        f"{element.name}.{name} {value[:40]!r}... is {len(value)} characters long; at most "
                        f"{key_lengths[name]} fit (the registry column's length, the same on every backend)"
                    )
            elif kind == "time":
                try:
                    row[name] = to_nsec(value)
                except ValueError as err:
                    raise DataIdError(f"{element.name}.{name}: {err}") from None
            elif kind == "region":
                row[name] = encode_region(validate_region(value, f"{element.name} region") if not isinstance(
                    value, (bytes, bytearray, memoryview)) else value)
            elif kind == "float":
                if isinstance(value, (str, bytes, bool)):
                    raise DataIdError(f"{element.name}.{name} must be a number, got {value!r}")
                try:
                    row[name] = float(value)
                except (TypeError, ValueError):
                    raise DataIdError(f"{element.name}.{name} must be a number, got {value!r}") from None
            elif kind == "int":
                row[name] = coerce_value(f"{element.name}.{name}", "int", value)
            elif kind == "str":
                if not isinstance(value, str):
                    raise DataIdError(f"{element.name}.{name} must be a string, got {value!r}")
                if name in lengths and len(value) > lengths[name]:
                    raise DataIdError(
                        f"{element.name}.{name} is {len(value)} characters long; at most {lengths[name]} fit"
                    )
                row[name] = value
            else:
                row[name] = value
        return row

    def from_row(self, element: DimensionElement, row: Mapping[str, Any] | sa.RowMapping) -> DimensionRecord:
        types = element.field_types
        values = {}
        for name, kind in types.items():
            v = row[name]
            if v is not None:
                if kind == "time":
                    v = from_nsec(v)
                elif kind == "region":
                    v = decode_region(v)
            values[name] = v
        return DimensionRecord(element, values)

    # -- insert ---------------------------------------------------------------------------
    def insert(
        self,
        element_name: str,
        records: Iterable[Mapping[str, Any]],
        *,
        conflict: str = "error",
        conn: sa.Connection | None = None,
    ) -> int:
        """Insert records; ``conflict`` is "error" (ConflictError), "skip" or "replace".

        Absent records of implied dimensions without required fields (``day_obs``, ``band``) are
        created on the way; others (a visit's ``physical_filter``) must exist already.
        """
        if conflict not in ("error", "skip", "replace"):
            raise ValueError(f"conflict must be 'error', 'skip' or 'replace', not {conflict!r}")
        try:
            element = self.universe[element_name]
        except KeyError:
            close = difflib.get_close_matches(element_name, [e.name for e in self.universe.elements])
            raise DataIdError(
                f"unknown dimension element {element_name!r}"
                + (f"; did you mean {close[0]!r}?" if close else f"; known: {[e.name for e in self.universe.elements]}")
            ) from None
        rows = [self.to_row(element, r) for r in records]
        if not rows:
            return 0
        if conn is None:
            with self._db.transaction(write=True) as c:
                return self._insert_rows(element, rows, conflict, c)
        return self._insert_rows(element, rows, conflict, conn)

    def _insert_rows(self, element: DimensionElement, rows: list[dict[str, Any]], conflict: str,
                     conn: sa.Connection) -> int:
        table = self._schema.elements[element.name]
        pk = element.primary_key_columns
        try:
            self._ensure_implied(element, rows, conn)
            if conflict == "replace":
                for row in rows:
                    cond = [table.c[c] == row[c] for c in pk]
                    conn.execute(table.delete().where(*cond))  # cascades to the spatial index
                conn.execute(table.insert(), rows)
            elif conflict == "skip":
                result = conn.execute(self._db.insert_ignore(table), rows)
                if element.spatial and result.rowcount != len(rows):
                    rows = self._rows_just_inserted(element, rows, conn)
            else:
                conn.execute(table.insert(), rows)
            if element.spatial:
                self.spatial.insert(conn, element, rows)
        except sa.exc.IntegrityError as err:
            # Explain from committed state on a fresh connection: the failed transaction may be
            # unusable (PostgreSQL aborts it). Rows inserted earlier in the same transaction are
            # not visible there, which only matters for the wording of the message.
            with self._db.transaction() as fresh:
                raise self._explain_integrity_error(element, rows, fresh, err) from None
        return len(rows)

    def _rows_just_inserted(self, element: DimensionElement, rows: list[dict[str, Any]], conn: sa.Connection
                            ) -> list[dict[str, Any]]:
        """Of rows given to an insert-ignore, those that have no spatial index rows yet."""
        index = self.spatial.tables[element.name]
        pk = element.primary_key_columns
        out = []
        for row in rows:
            cond = [index.c[c] == row[c] for c in pk]
            if not conn.execute(sa.select(sa.func.count()).select_from(index).where(*cond)).scalar():
                out.append(row)
        return out

    def update_regions(self, element_name: str, records: Iterable[Mapping[str, Any]], *,
                       conn: sa.Connection | None = None) -> int:
        """Replace the regions of existing records and their spatial index, in one transaction."""
        if element_name not in self.universe or not self.universe[element_name].spatial:
            spatial = [e.name for e in self.universe.spatial_elements]
            raise RegionError(f"{element_name!r} has no regions to update; elements with regions: {spatial}")
        element = self.universe[element_name]
        pk = element.primary_key_columns
        rows = []
        for record in records:
            extra = set(record) - set(pk) - {"region"}
            if extra or "region" not in record:
                raise DataIdError(
                    f"update_regions takes {list(pk)} and 'region' for {element.name}; got keys {sorted(record)}"
                )
            key = {k: coerce_value(f"{element.name}.{k}", element.field_types[k], record[k]) for k in pk}
            region = record["region"]
            data = encode_region(validate_region(region, f"{element.name} region") if region is not None else None)
            rows.append({**key, "region": data})
        if conn is None:
            with self._db.transaction(write=True) as c:
                return self._update_regions(element, rows, c)
        return self._update_regions(element, rows, conn)

    def _update_regions(self, element: DimensionElement, rows: list[dict[str, Any]], conn: sa.Connection) -> int:
        pk = element.primary_key_columns
        table = self._schema.elements[element.name]
        for row in rows:
            cond = [table.c[c] == row[c] for c in pk]
            result = conn.execute(table.update().where(*cond).values(region=row["region"]))
            if result.rowcount != 1:
                key = {c: row[c] for c in pk}
                raise DataIdError(f"no {element.name} record {key} to update; insert it first")
        self.spatial.delete(conn, element, rows)
        self.spatial.insert(conn, element, rows)
        return len(rows)

    def stored_rows(self, element_name: str, keys: Sequence[Any], conn: sa.Connection) -> list[dict[str, Any]]:
        """The stored rows (database values, not records) of an element with a one-column primary key
        (``flavor``, ``skymap``...) whose keys are in ``keys``: one SELECT, for comparing definitions."""
        element = self.universe[element_name]
        (pk,) = element.primary_key_columns
        table = self._schema.elements[element_name]
        return [dict(row) for row in conn.execute(sa.select(table).where(table.c[pk].in_(list(keys)))).mappings()]

    def observation_times(self, element_name: str, keys: Iterable[tuple[str, int]], conn: sa.Connection | None = None
                          ) -> dict[tuple[str, int], dict[str, Any]]:
        """Begin time (ns) and implied values (physical_filter, day_obs, band) of the exposures or
        visits ``(instrument, id)``: one SELECT per instrument and 5000 ids."""
        if conn is None:
            with self._db.transaction() as c:
                return self.observation_times(element_name, keys, c)
        t = self._schema.elements[element_name]
        band = self._schema.elements["physical_filter"]
        by_inst: dict[str, list[int]] = {}
        for inst, id_ in set(keys):
            by_inst.setdefault(inst, []).append(id_)
        cols = [t.c.instrument, t.c.id, t.c.begin, t.c.physical_filter, t.c.day_obs, band.c.band]
        joined = t.outerjoin(band, sa.and_(band.c.instrument == t.c.instrument, band.c.name == t.c.physical_filter))
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for inst, ids in by_inst.items():
            for start in range(0, len(ids), 5000):
                stmt = sa.select(*cols).select_from(joined).where(t.c.instrument == inst,
                                                                  t.c.id.in_(ids[start:start + 5000]))
                for row in conn.execute(stmt):
                    out[(row[0], row[1])] = {"begin": row[2], "physical_filter": row[3], "day_obs": row[4],
                                             "band": row[5]}
        return out

    def ids_of_instrument(self, element_name: str, instrument: str, conn: sa.Connection | None = None) -> set[int]:
        """The ids of ``element``'s records of one instrument (exposures, visits): ids only, no
        region is decoded."""
        if conn is None:
            with self._db.transaction() as c:
                return self.ids_of_instrument(element_name, instrument, c)
        t = self._schema.elements[element_name]
        return set(conn.execute(sa.select(t.c.id).where(t.c.instrument == instrument)).scalars())

    def delete_detector_regions(self, conn: sa.Connection, instrument: str, visits: Sequence[int]) -> None:
        """Delete the visit+detector regions (and their index rows) of ``visits``, before they are recomputed."""
        schema = self._schema
        ids = list(visits)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for table in (schema.skypix["visit_detector_region"], schema.elements["visit_detector_region"]):
                conn.execute(table.delete().where(table.c.instrument == instrument, table.c.visit.in_(chunk)))

    def update_fields(self, element_name: str, records: Sequence[Mapping[str, Any]], conn: sa.Connection) -> int:
        """Rewrite the fields given in ``records`` (each: the primary key plus the same fields) of
        existing records, in one executemany; other fields are kept. Implied records without fields
        (a new ``day_obs``) are created, and a changed region is re-indexed."""
        if not records:
            return 0
        element = self.universe[element_name]
        table = self._schema.elements[element_name]
        pk = element.primary_key_columns
        converted = [self.to_row(element, row) for row in records]
        self._ensure_implied(element, converted, conn)
        fields = [c for c in records[0] if c not in pk]
        stmt = (table.update()
                .where(*[table.c[k] == sa.bindparam(f"key_{k}") for k in pk])
                .values({f: sa.bindparam(f"new_{f}") for f in fields}))
        conn.execute(stmt, [{**{f"key_{k}": r[k] for k in pk}, **{f"new_{f}": r[f] for f in fields}}
                            for r in converted])
        if element.spatial and "region" in fields:
            self.spatial.delete(conn, element, converted)
            self.spatial.insert(conn, element, converted)
        return len(converted)

    def analyze(self, element_names: Iterable[str]) -> None:
        """Refresh the planner's statistics of these elements' tables and spatial index (after a bulk load)."""
        schema = self._schema
        tables = []
        for name in element_names:
            tables.append(schema.elements[name])
            if name in schema.skypix:
                tables.append(schema.skypix[name])
        self._db.analyze(tables)

    def _ensure_implied(self, element: DimensionElement, rows: list[dict[str, Any]], conn: sa.Connection) -> None:
        for implied in element.implies:
            target = self.universe[implied]
            if target.implies or any(not f.nullable for f in target.fields):
                continue  # only key-only records (day_obs) are created implicitly
            keys = [d for d in target.required if d != implied]
            values = {tuple(r[k] for k in keys) + (r[implied],) for r in rows if r.get(implied) is not None}
            if values:
                cols = list(target.primary_key_columns)
                conn.execute(self._db.insert_ignore(self._schema.elements[implied]),
                             [dict(zip(cols, v)) for v in values])

    def _explain_integrity_error(self, element: DimensionElement, rows: list[dict[str, Any]],
                                 conn: sa.Connection, err: Exception) -> Exception:
        """Turn a database constraint failure into a message naming the offending record."""
        table = self._schema.elements[element.name]
        pk = element.primary_key_columns
        # Duplicates of existing rows?
        for row in rows:
            cond = [table.c[c] == row[c] for c in pk]
            if conn.execute(sa.select(sa.func.count()).select_from(table).where(*cond)).scalar():
                key = {c: row[c] for c in pk}
                return ConflictError(
                    f"a {element.name} record with {key} already exists; pass conflict='replace' to replace it "
                    "or conflict='skip' to keep it"
                )
        seen = [tuple(r[c] for c in pk) for r in rows]
        if len(set(seen)) != len(seen):
            return ConflictError(f"the {element.name} records given contain duplicate keys {pk}")
        # A referenced record that does not exist?
        for dep in (*element.required, *element.implies):
            if dep == element.name:
                continue
            target = self.universe[dep]
            missing = self.missing_keys(target, rows, conn)
            if missing:
                return DataIdError(missing)
        return DataIdError(f"{element.name} records rejected by the registry: {getattr(err, 'orig', err)}")

    def missing_keys(self, target: DimensionElement, rows: Sequence[Mapping[str, Any]],
                     conn: sa.Connection) -> str | None:
        """Describe the first row referring to a ``target`` record that does not exist, if any."""
        ttable = self._schema.elements[target.name]
        local = [d for d in target.required]
        remote = target.primary_key_columns
        for row in rows:
            if any(row.get(c) is None for c in local):
                continue
            cond = [ttable.c[r] == row[loc] for loc, r in zip(local, remote)]
            if not conn.execute(sa.select(sa.func.count()).select_from(ttable).where(*cond)).scalar():
                parents = [ttable.c[r] == row[loc] for loc, r in zip(local[:-1], remote[:-1])]
                existing: Sequence[Any] = conn.execute(sa.select(ttable.c[remote[-1]]).where(*parents).limit(200)).scalars().all()
                value = row[local[-1]]
                close = _closest(value, existing)
                scope = ", ".join(f"{loc}={row[loc]!r}" for loc in local[:-1])
                where = f" for {scope}" if scope else ""
                return (
                    f"{target.name} {value!r} does not exist{where}; "
                    + (f"closest existing: {close}" if close else "no such records are registered")
                )
        return None

    def implied_statement(self, element: DimensionElement, builder: Any) -> sa.Select[*tuple[Any, ...]]:
        """A cached SELECT of everything ``element``'s record implies (transitively), by primary key."""
        stmt = self._implied_statements.get(element.name)
        if stmt is None:
            group = self.universe.group(element.required)
            built = builder.build(dimensions=group, data_id={d: sa.bindparam(d) for d in element.required},
                                  with_implied=True)
            cols = [built.dimension_column(n).label(n) for n in group.implied]
            stmt = built.select(*cols).limit(1)
            self._implied_statements[element.name] = stmt
        return stmt

    # -- read -----------------------------------------------------------------------------
    def fetch(self, element: DimensionElement, stmt: sa.Select[*tuple[Any, ...]],
              conn: sa.Connection) -> list[DimensionRecord]:
        return [self.from_row(element, row._mapping) for row in conn.execute(stmt)]


def _closest(value: Any, existing: Sequence[Any], n: int = 5) -> list[Any]:
    if not existing:
        return []
    if isinstance(value, int):
        return sorted(existing, key=lambda v: abs(v - value) if isinstance(v, int) else 0)[:n]
    return difflib.get_close_matches(str(value), [str(e) for e in existing], n=n, cutoff=0.0)


_KEY_LENGTHS: dict[DimensionElement, dict[str, int]] = {}


def _key_lengths(element: DimensionElement) -> dict[str, int]:
    """Maximum lengths of the string key columns of ``element``'s table (its own key, the keys of
    the dimensions it requires and implies), as the schema sizes them; computed once per element."""
    cached = _KEY_LENGTHS.get(element)
    if cached is None:
        cached = _KEY_LENGTHS[element] = _compute_key_lengths(element)
    return cached


def _compute_key_lengths(element: DimensionElement) -> dict[str, int]:
    universe = element.universe
    out = {}
    for name in (*element.primary_key_columns, *element.implies):
        spec = element.key if element.is_dimension and name == element.key_name else (
            universe[name].key if name in universe.dimensions else None)
        if spec is not None and spec.type == "str" and spec.length:
            out[name] = spec.length
    return out
