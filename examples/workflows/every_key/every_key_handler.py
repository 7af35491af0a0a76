"""Functions of the every_key workflow (docs/workflows.md): one per node."""
import json
import time


def _value(row, key="body"):
    value = row.get(key, row.get("data"))
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    return value if isinstance(value, str) else json.dumps(value)


def parse(data, context):  # start node: the request's JSON, as text
    return None if data is None else [_value(row) for row in data]


def square(data, context):  # foreach: one number per row
    return None if data is None else [str(int(_value(row)) ** 2) for row in data]


def report(data, context):  # inputs: request, squares, first
    if data is None:
        return None
    return [json.dumps({k: json.loads(_value(row, k)) for k in sorted(row)}) for row in data]


def shout(data, context):  # when: mood == 'loud'
    return None if data is None else [json.loads(_value(r))["mood"].upper() for r in data]


def flaky(data, context):  # on-error: {default: ...}
    if data is None:
        return None
    raise RuntimeError("flaky is down")


def nap(data, context):  # when: nap > 0, against the deadline
    if data is None:
        return None
    time.sleep(json.loads(_value(data[0]))["nap"])
    return ["rested" for _ in data]
