"""Provenance records as stored: the encoding of a quantum's input ids, for restart checks.

`Butler.provenance` and `Butler.query_provenance` return records as dictionaries;
`Butler.recorded_inputs` returns the stored input lists as text (one query for any number of refs),
which a planner compares with the inputs it would use now without parsing them (`same_inputs`),
and parses (`decode_inputs`) only where they differ.
"""

from ._provenance import decode_inputs, encode_inputs, same_inputs

__all__ = ["decode_inputs", "encode_inputs", "same_inputs"]
