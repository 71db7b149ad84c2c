"""The device agent: enrol, poll for a task, fetch the global adapter, sanitize local data, train, upload.

    feddetox edge run --coordinator HOST:PORT --enrol-token T --data pairs.jsonl --guardian BUNDLE
    feddetox edge sanitize --data pairs.jsonl --guardian BUNDLE --out clean.jsonl

Modules: `assignment` (a task as a dataclass), `state` (the device's state folder), `transport` (the gRPC
client of the coordinator), `agent` (the loop), `cli` (the commands). Local text never leaves the device:
only the trained adapter, its metrics and sanitization counts do.
"""
