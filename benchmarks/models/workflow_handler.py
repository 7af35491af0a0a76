"""The benchmark workflows' handler file.

Most benchmark DAGs are made of models (echo or sleep .mars). Scenario (h) chains function
nodes instead: ``f1`` ... ``f5`` each answer every request of the batch with its input
unchanged, as the echo model does.
"""


def _echo(data):
    if data is None:  # called once at load
        return None
    out = []
    for row in data:
        value = row.get("body", row.get("data", b""))
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, (bytes, bytearray)):
            import json

            value = json.dumps(value).encode("utf-8")
        out.append(bytes(value))
    return out


def f1(data, context):
    return _echo(data)


def f2(data, context):
    return _echo(data)


def f3(data, context):
    return _echo(data)


def f4(data, context):
    return _echo(data)


def f5(data, context):
    return _echo(data)
