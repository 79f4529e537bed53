"""The planner: pipeline + data query + collections -> a plan of quanta, with O(1) queries.

1. One query over the union of the pipeline's dimensions (spatial joins included) returns every
   consistent combination of data ID values, constrained by the where-expression and by the
   existence of the pipeline's overall inputs in the input collections. Dimensions that relate to
   nothing (the coadd ``flavor``) are queried on their own and crossed in.
2. Each task's quanta are the distinct projections of those rows onto its dimensions; each
   input connection gets the data IDs that the rows relate to the quantum.
3. Inputs are resolved with one set-based lookup per dataset type (existing datasets) or taken
   from the upstream quantum that predicts them; existing outputs are found with one set-based
   lookup per output type, which decides skips on resume.
4. A quantum whose outputs all exist is complete only if its inputs are the ones the quantum that
   wrote them recorded (one bulk query of those provenance records per task) and none of them is
   re-made by a quantum that runs in this execution; otherwise it runs again, its old outputs
   removed first. Outputs without a provenance record (written by hand) count as complete, and
   the plan says their inputs were not checked.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from butler import Butler, DataCoordinate, DatasetRef, DatasetType
from butler.dimensions import DimensionGroup
from butler.errors import ButlerError, CollectionError, ConflictError, RunOwnershipError
from butler.provenance import decode_inputs, same_inputs
from butler.utils import gc_paused

from ._connections import Input, PrerequisiteInput
from ._pipeline import Pipeline, PipelineError, TaskDef
from ._plan import RERUN_CHANGED, RERUN_REMADE, RUN, SKIP, Plan, Quantum
from ._provenance import init_output_types

Key: TypeAlias = tuple[Any, ...]
"""The values of a data ID's required dimensions, in its group's order (``DataCoordinate.values``)."""

__all__ = ["Planner", "PlanningError"]


class PlanningError(ValueError, ButlerError):
    """The pipeline cannot be planned against this repository and query."""


class Planner:
    """Builds plans against one repository."""

    def __init__(self, butler: Butler) -> None:
        self.butler = butler
        self._producers: Mapping[str, str] = {}
        self._made_here: set[uuid.UUID] = set()  # predicted output ids of quanta that run in this plan

    @gc_paused()
    def build(
        self,
        pipeline: Pipeline,
        *,
        inputs: str | Sequence[str],
        output_run: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        data_id: Mapping[str, Any] | None = None,
        extend_run: bool = False,
        resume: bool = False,
        clobber_outputs: bool = False,
        skip_existing_in: Sequence[str] | None = None,
        calibs: Mapping[str, str | Sequence[str]] | None = None,
    ) -> Plan:
        """... ``calibs`` picks the calibration collections per dataset type of prerequisite
        calibrations (default: ``butler.calibs``, else ``<instrument>/calib``)."""
        butler = self.butler
        self._calibs = dict(calibs or {})
        universe = butler.universe
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        defs = pipeline.task_defs()
        extend_run = extend_run or resume
        run_exists = self._check_output_run(output_run, extend_run)
        producers = {c.dataset_type: d.label for d in defs for c in d.task_class.outputs().values()}
        self._producers, self._made_here = producers, set()
        self._check_dataset_types(defs, producers)
        # Aliases of the instruments of the repository the inputs come from (an upstream, if there is one).
        source = butler.upstream or butler
        constraints = dict(source.reader.data_ids.constraints(data_id, {})) if data_id else {}

        # -- 1. the big query -------------------------------------------------------------------
        all_dims: set[str] = set()
        for d in defs:
            all_dims.update(universe.group(d.task_class.dimensions).names)
            for c in (*d.task_class.inputs().values(), *d.task_class.outputs().values()):
                all_dims.update(universe.group(c.dimensions).names)
        free = {n for n in all_dims if self._is_free(n, all_dims)}
        query_dims = universe.group(all_dims - free)
        overall_inputs = sorted({c.dataset_type for d in defs for c in d.task_class.inputs().values()
                                 if c.dataset_type not in producers})
        constrain_types = [t for t in overall_inputs
                           if set(universe.group(butler.get_dataset_type(t).dimensions).names) <= set(query_dims.names)]
        rows = butler.query_data_ids(
            list(query_dims.required), where=where or None, bind=bind,
            data_id={k: v for k, v in constraints.items() if k in query_dims.names} or None,
            datasets=constrain_types or None, collections=inputs,
        )
        if not rows:
            raise PlanningError(
                f"the data query selects nothing: where={where!r} with {dict(bind or {})}, data ID {constraints}, "
                f"inputs {inputs}"
                + (f" (with datasets of {constrain_types} required)" if constrain_types else "")
            )
        row_dicts = [r.to_dict(implied=True) for r in rows]
        free_values = self._free_values(free, constraints)

        # -- 2./3. quanta per task ----------------------------------------------------------------
        existing_inputs: dict[str, dict[DataCoordinate, DatasetRef]] = {}
        produced: dict[str, dict[Key, tuple[int, DatasetRef]]] = {}
        quanta: list[Quantum] = []
        output_lookup = [output_run] if run_exists else []
        skip_colls = list(skip_existing_in or [])
        for d in defs:
            quanta.extend(self._plan_task(
                d, row_dicts, free_values, inputs, output_run, producers, produced, existing_inputs,
                len(quanta), output_lookup, skip_colls, resume=resume, extend_run=extend_run,
                clobber_outputs=clobber_outputs,
            ))
        init_outputs = {
            d.label: {name: DatasetRef(dt, DataCoordinate.from_values(universe.empty, ()), output_run)
                      for name, dt in init_output_types(d).items()}
            for d in defs
        }
        notes = []
        if free:
            notes.append(f"crossed in without relation: {', '.join(sorted(free))} "
                         f"({', '.join(str(len(v)) for v in free_values.values())} values)")
        return Plan(defs, quanta, output_run, inputs, init_outputs, where=where, notes=notes)

    # -- checks -------------------------------------------------------------------------------
    def _check_output_run(self, output_run: str, extend_run: bool) -> bool:
        butler = self.butler
        try:
            info = butler.collection_info(output_run)
        except CollectionError:
            return False
        if info.type.name != "RUN":
            raise PlanningError(f"output {output_run!r} exists and is a {info.type.name} collection, not a RUN")
        if info.owner and info.owner != butler.user:
            raise RunOwnershipError(
                f"output run {output_run!r} belongs to {info.owner!r}, not to you ({butler.user!r}); "
                "choose another output run"
            )
        if not extend_run:
            raise ConflictError(
                f"output run {output_run!r} already exists; pass --resume to finish it (skipping quanta whose "
                "outputs exist), --extend-run to add to it, or choose a new run"
            )
        return True

    def _check_dataset_types(self, defs: list[TaskDef], producers: Mapping[str, str]) -> None:
        butler = self.butler
        for d in defs:
            for conn in d.task_class.connections.values():
                try:
                    registered = butler.get_dataset_type(conn.dataset_type)
                except LookupError:
                    if conn.dataset_type in producers or conn.dataset_type.endswith("_config"):
                        continue
                    if isinstance(conn, Input):
                        raise PipelineError(
                            f"{d.label}: input dataset type {conn.dataset_type!r} is not registered in "
                            f"{butler.root} and no task of the pipeline produces it"
                        ) from None
                    continue
                wanted = conn.to_dataset_type()
                if registered.is_calibration and isinstance(conn, PrerequisiteInput):  # issue 7
                    wanted = DatasetType(wanted.name, wanted.dimensions, wanted.storage_class, is_calibration=True)
                if registered != wanted:
                    raise PipelineError(
                        f"{d.label}: connection {conn.name!r} declares {conn.dataset_type!r} as "
                        f"{list(wanted.dimensions)}/{wanted.storage_class} but the repository has it as "
                        f"{list(registered.dimensions)}/{registered.storage_class}"
                    )

    def _is_free(self, name: str, dims: set[str]) -> bool:
        universe = self.butler.universe
        element = universe[name]
        if element.direct_requires or element.implies:
            return False
        for other in dims:
            e = universe[other]
            if other != name and (name in e.required or name in e.implies):
                return False
        # instrument, band and skymap relate through other dimensions' records
        return name not in ("instrument", "band", "skymap")

    def _free_values(self, free: set[str], constraints: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for name in sorted(free):
            kwargs = {name: constraints[name]} if name in constraints else {}
            records = [r.to_dict() for r in self.butler.query_dimension_records(name, **kwargs)]
            if not records:
                raise PlanningError(f"no {name!r} records match {kwargs or 'the query'}; insert some first")
            out[name] = records
        return out

    # -- per task -------------------------------------------------------------------------------
    def _plan_task(
        self, d: TaskDef, rows: list[dict[str, Any]], free_values: Mapping[str, list[dict[str, Any]]],
        inputs: list[str], output_run: str, producers: Mapping[str, str],
        produced: dict[str, dict[Key, tuple[int, DatasetRef]]],
        existing_inputs: dict[str, dict[DataCoordinate, DatasetRef]], first_index: int,
        output_lookup: list[str], skip_colls: list[str], *, resume: bool, extend_run: bool, clobber_outputs: bool,
    ) -> list[Quantum]:
        butler = self.butler
        universe = butler.universe
        cls = d.task_class
        group = universe.group(cls.dimensions)
        free = [n for n in group.required if n in free_values]
        bound = [n for n in group.required if n not in free_values]
        implied = list(group.implied)
        # Quantum keys (bound part) and, per connection, related data IDs from the rows.
        connections: list[tuple[str, Input, DimensionGroup]] = [
            (name, c, universe.group(c.dimensions)) for name, c in cls.inputs().items()
        ] + [(name, c, universe.group(c.dimensions)) for name, c in cls.prerequisites().items()]
        keys: dict[Key, dict[str, Any]] = {}
        related: dict[str, dict[Key, dict[Key, dict[str, Any]]]] = {name: {} for name, _, _ in connections}
        for row in rows:
            key = tuple(row[n] for n in bound)
            if key not in keys:
                keys[key] = {n: row[n] for n in implied if n in row}
            for name, c, cg in connections:
                if all(n in row for n in cg.required):
                    ckey = tuple(row[n] for n in cg.required)
                    per = related[name].setdefault(key, {})
                    if ckey not in per:
                        per[ckey] = {n: row[n] for n in cg.implied if n in row}
        # Cross in free dimensions.
        free_combos: list[dict[str, Any]] = [{}]
        for n in free:
            free_combos = [{**combo, n: rec} for combo in free_combos for rec in free_values[n]]
        quanta = []
        index = first_index
        key_names = {n: universe[n].key_name for n in free}
        for key, implied_values in keys.items():
            for combo in free_combos:
                values = dict(zip(bound, key))
                values.update({n: rec[key_names[n]] for n, rec in combo.items()})
                coord = DataCoordinate.from_values(group, tuple(values[n] for n in group.required),
                                                   implied_values or None)
                quanta.append(Quantum(index, d.label, coord, {}, {},
                                      context={"records": dict(combo), "key": key}))
                index += 1
        if not quanta:
            return []
        # Resolve inputs set-based, per connection.
        for name, c, cg in connections:
            self._resolve_connection(d, name, c, cg, quanta, related[name], inputs, producers, produced,
                                     existing_inputs)
        # Outputs: predicted refs, then existing ones (one lookup per output type).
        outputs = cls.outputs()
        output_types = {name: c.to_dataset_type() for name, c in outputs.items()}
        for q in quanta:
            for name, dt in output_types.items():
                q.outputs[name] = DatasetRef.unchecked(dt, q.data_id, output_run, uuid.uuid4())
        self._apply_existing(d, quanta, outputs, output_lookup, skip_colls, resume=resume, extend_run=extend_run,
                             clobber_outputs=clobber_outputs)
        for q in quanta:
            q.context.pop("key", None)
            for name, output in outputs.items():
                ref = q.outputs[name]
                if q.status == RUN or q.reason.startswith("outputs exist"):
                    produced.setdefault(output.dataset_type, {})[ref.data_id.values] = (q.index, ref)
        if output_lookup or skip_colls:  # only then can a later task's quantum be found complete
            self._made_here.update(ref.id for q in quanta if q.status == RUN for ref in q.outputs.values())
        return quanta

    def _resolve_connection(self, d: TaskDef, name: str, c: Input, cg: DimensionGroup, quanta: list[Quantum],
                            related: dict[Key, dict[Key, dict[str, Any]]], inputs: list[str],
                            producers: Mapping[str, str], produced: dict[str, dict[Key, tuple[int, DatasetRef]]],
                            existing_inputs: dict[str, dict[DataCoordinate, DatasetRef]]) -> None:
        q_group = quanta[0].data_id.group
        subset = set(cg.required) <= set(q_group.names)
        upstream_of = produced.get(c.dataset_type) if c.dataset_type in producers else None
        calib = None  # prerequisite calibrations: by validity at the exposure/visit time (issue 7)
        if upstream_of is None and isinstance(c, PrerequisiteInput):
            from ._calib_lookup import resolve_calibs

            calib = resolve_calibs(self.butler, c.dataset_type, cg, quanta,
                                   lambda q: self._connection_keys(q, cg, subset, related), getattr(self, "_calibs", {}))
        if upstream_of is None and calib is None:
            wanted: dict[Key, DataCoordinate] = {}
            for q in quanta:
                for ckey, imp in self._connection_keys(q, cg, subset, related).items():
                    wanted.setdefault(ckey, DataCoordinate.from_values(cg, ckey, imp or None))
            found = self._find_existing(c.dataset_type, list(wanted.values()), inputs)
        for q in quanta:
            refs: list[DatasetRef] = []
            upstream: set[int] = set()
            for ckey in self._connection_keys(q, cg, subset, related):
                if upstream_of is not None:
                    hit = upstream_of.get(ckey)
                    if hit is not None:
                        upstream.add(hit[0])
                        refs.append(hit[1])
                else:
                    ref = calib.get((q.index, ckey)) if calib is not None else found.get(ckey)
                    if ref is not None:
                        refs.append(ref)
            q.inputs[name] = tuple(refs)
            q.upstream = tuple(sorted(set(q.upstream) | upstream))
            if q.status != RUN:
                continue
            if not c.multiple and len(refs) != 1:
                if refs:
                    raise PlanningError(f"{d.label} {q.data_id}: input {name!r} matches {len(refs)} datasets of "
                                        f"{c.dataset_type!r}; declare it multiple=True or constrain the query")
                q.status, q.reason = SKIP, f"missing input {c.dataset_type}"
            elif c.multiple and len(refs) < c.minimum:
                q.status, q.reason = SKIP, f"fewer than {c.minimum} {c.dataset_type} inputs"

    @staticmethod
    def _connection_keys(q: Quantum, cg: DimensionGroup, subset: bool, related: dict[Key, dict[Key, dict[str, Any]]]
                         ) -> dict[Key, dict[str, Any]]:
        if subset:
            values = q.data_id.to_dict(implied=True)
            return {tuple(values[n] for n in cg.required): {n: values[n] for n in cg.implied if n in values}}
        return related.get(q.context["key"], {})

    def _find_existing(self, dataset_type: str, coords: list[DataCoordinate], collections: list[str]
                       ) -> dict[Key, DatasetRef]:
        return {k.values: v for k, v in self._find_refs(dataset_type, coords, collections).items()}

    def _find_refs(self, dataset_type: str, coords: list[DataCoordinate], collections: list[str]
                   ) -> dict[DataCoordinate, DatasetRef]:
        """One set-based lookup: the refs of ``dataset_type`` found for ``coords`` (keyed by those
        coordinate objects), first collection wins."""
        return self.butler.find_datasets(dataset_type, coords, collections=collections)

    @gc_paused()
    def _apply_existing(self, d: TaskDef, quanta: list[Quantum], outputs: Mapping[str, Any],
                        output_lookup: list[str], skip_colls: list[str], *, resume: bool, extend_run: bool,
                        clobber_outputs: bool) -> None:
        """Decide skips from existing outputs: one lookup per output type and collection list."""
        if not outputs or not (output_lookup or skip_colls):
            return
        butler = self.butler
        coords = [q.data_id for q in quanta]
        names = list(outputs)
        in_run: dict[str, dict[DataCoordinate, DatasetRef]] = {}
        elsewhere: dict[str, dict[DataCoordinate, DatasetRef]] = {}
        for name, c in outputs.items():
            try:
                butler.get_dataset_type(c.dataset_type)
            except LookupError:
                return  # never registered: nothing can exist
            in_run[name] = self._find_refs(c.dataset_type, coords, output_lookup) if output_lookup else {}
            elsewhere[name] = self._find_refs(c.dataset_type, coords, skip_colls) if skip_colls else {}
        n_outputs = len(names)
        complete: list[tuple[Quantum, dict[str, DatasetRef], str]] = []  # pending the provenance check
        for q in quanta:
            did = q.data_id
            have = {n: ref for n in names if (ref := in_run[n].get(did)) is not None}
            if len(have) == n_outputs:
                if resume:
                    complete.append((q, have, "outputs exist (resume)"))
                    continue
                if not clobber_outputs:
                    raise ConflictError(
                        f"{d.label} {q.data_id}: outputs already exist in {q.outputs[names[0]].run!r}; "
                        "use --resume to skip such quanta or --clobber-outputs to redo them"
                    )
            elif have and not clobber_outputs:
                raise ConflictError(
                    f"{d.label} {q.data_id}: only some outputs exist ({sorted(have)} of {sorted(outputs)}), "
                    "left by an interrupted run; pass --clobber-outputs to remove them and run it again"
                )
            if have:
                q.context["clobber"] = list(have.values())
                continue
            if skip_colls:
                found = {n: ref for n in names if (ref := elsewhere[n].get(did)) is not None}
                if len(found) == n_outputs:
                    complete.append((q, found, "outputs exist in --skip-existing-in collections"))
        self._check_provenance(complete, names[0])

    def _check_provenance(self, complete: list[tuple[Quantum, dict[str, DatasetRef], str]], first: str) -> None:
        """Skip the quanta whose existing outputs were made from the inputs they would use now; run the
        others again (removing outputs of the output run first). One provenance query for all."""
        if not complete:
            return
        recorded = self.butler.recorded_inputs([have[first] for _, have, _ in complete])
        made_here = self._made_here
        for (q, have, reason), stored in zip(complete, recorded):
            if not made_here and stored is not None and len(stored) == 36 and len(q.inputs) == 1:
                # The common case first (one input, recorded as '["<hex>"]'), without building lists.
                (only,) = q.inputs.values()
                if len(only) == 1 and same_inputs(stored, (only[0].id,)):
                    q.status, q.reason = SKIP, reason
                    q.outputs.update(have)
                    continue
            current = [r for refs in q.inputs.values() for r in refs]
            remade = [r for r in current if r.id in made_here] if made_here else []
            if remade:
                why = RERUN_REMADE, f"{RERUN_REMADE}: {self._describe_inputs(remade)} will be made again"
            elif stored is None:
                q.status, q.reason = SKIP, f"{reason}; no provenance recorded, inputs not checked"
                q.outputs.update(have)
                continue
            else:
                if same_inputs(stored, [r.id for r in current]):
                    new, gone = [], 0
                else:
                    inputs = decode_inputs(stored)
                    new = [r for r in current if r.id.hex not in inputs]
                    gone = len(inputs) - (len(current) - len(new))
                if not new and not gone:
                    q.status, q.reason = SKIP, reason
                    q.outputs.update(have)
                    continue
                parts = [f"{self._describe_inputs(new)} {'is' if len(new) == 1 else 'are'} new"] if new else []
                if gone:
                    parts.append(f"{gone} recorded input(s) no longer used")
                why = RERUN_CHANGED, f"{RERUN_CHANGED}: {'; '.join(parts)}"
            if q.status != RUN:  # an input is missing now: it cannot run, and its old outputs are stale
                q.reason = f"{q.reason}; its existing outputs are not used ({why[1]})"
                continue
            q.context["rerun"], q.reason = why
            clobber = [ref for ref in have.values() if ref.run == q.outputs[first].run]  # in the output run
            if clobber:
                q.context["clobber"] = clobber

    def _describe_inputs(self, refs: list[DatasetRef]) -> str:
        """``add output added {...}`` (and how many more), for restart reasons."""
        ref = refs[0]
        name = ref.dataset_type.name
        producer = self._producers.get(name)
        data_id = "{" + ", ".join(f"{k}: {v!r}" for k, v in ref.data_id.to_dict().items()) + "}"  # required keys
        text = f"{producer} output {name} {data_id}" if producer else f"input {name} {data_id}"
        return text + (f" (and {len(refs) - 1} more)" if len(refs) > 1 else "")
