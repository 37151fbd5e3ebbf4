"""BIDS entities taken from the BIDS schema (``bidsschematools``, which pybids depends on and
which ships the schema: nothing is downloaded), never from a hand-kept list.

- :func:`entity_order`: every entity as ``(long name, short key)`` in file-name order;
- :func:`carried_entities`: the entities the schema allows for a raw file of a suffix (e.g.
  ``T1w``: subject, session, task, acquisition, ceagent, reconstruction, run, echo, part, chunk):
  all of them carry over from an input image to its outputs, so two echoes or the magnitude and
  phase parts of one scan never share an output name;
- :func:`file_entities`: those entities of a pybids ``BIDSFile``.

Example
-------
>>> carried_entities("T1w")[:3]
('subject', 'session', 'task')
>>> dict(entity_order())["echo"]
'echo'
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _schema():
    from bidsschematools.schema import load_schema

    return load_schema()


@lru_cache(maxsize=1)
def entity_order() -> tuple[tuple[str, str], ...]:
    """``(long name, short key)`` of every BIDS entity, in the schema's file-name order."""
    schema = _schema()
    return tuple((name, str(schema.objects.entities[name].name)) for name in schema.rules.entities)


@lru_cache(maxsize=None)
def carried_entities(suffix: str, datatype: str = "anat") -> tuple[str, ...]:
    """Long names of the entities the schema allows for raw ``datatype`` files with ``suffix``,
    in file-name order. Raises ValueError for a suffix the schema does not know there."""
    allowed: set[str] = set()
    for rule in _schema().rules.files.raw[datatype].values():
        if suffix in rule.get("suffixes", ()):
            allowed.update(rule.get("entities", {}))
    if not allowed:
        raise ValueError(f"the BIDS schema has no raw {datatype} files with suffix {suffix!r}")
    return tuple(name for name, _ in entity_order() if name in allowed)


def file_entities(bids_file, names) -> dict:
    """The entities ``names`` (schema long names) that ``bids_file`` (a pybids ``BIDSFile``)
    has. pybids names most entities like the schema, a few by their short key (``inv``, ``mt``)."""
    short = dict(entity_order())
    found = bids_file.get_entities()
    out = {}
    for name in names:
        for key in (name, short.get(name)):
            if key in found and found[key] is not None:
                out[name] = found[key] if name == "run" else str(found[key])
                break
    return out
