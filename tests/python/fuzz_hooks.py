"""Schemathesis hooks for the API fuzz (tests/python/fuzz_api.py): two checks of Chorus's
contract that the built-in ones cannot make, and realistic batch input files.

- `schema_valid_request_accepted` replaces Schemathesis's `positive_data_acceptance`: a request
  generated to fit its schema must not be refused, except with a status and code that the
  document itself lists on that response under `x-semantic-codes` (rules no JSON schema can
  state: a template must render with its input, a cursor must name a batch, a file's lines must
  be requests). 401, 403, 404 (an id that names nothing), 409 (a job already finished) and 429
  stay allowed, as in the built-in check.
- `events_match_their_schemas`: each Server-Sent Event's `data` is JSON matching the
  `contentSchema` the document gives for its `event` (Schemathesis checks the event's envelope,
  not what its data holds).
- `flatmap_body` for `createFile`: half the uploads carry a valid JSONL batch file, so the
  stateful phase has real file ids to make batches of. A JSON schema cannot describe the lines of
  a binary part, so without this every generated upload would be refused.
"""

import json

import hypothesis.strategies as st
import jsonschema
import schemathesis
from schemathesis import GenerationMode

# As the built-in check: a schema cannot promise which credentials or ids exist.
ALWAYS_ALLOWED = {401, 403, 404, 409, 429}


def _response_definition(case, status):
    responses = case.operation.definition.raw.get("responses", {})
    return responses.get(str(status), {})


@schemathesis.check
def schema_valid_request_accepted(ctx, response, case):
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return None
    status = response.status_code
    if status < 400 or status >= 500 or status in ALWAYS_ALLOWED:
        return None
    allowed = _response_definition(case, status).get("x-semantic-codes", [])
    try:
        code = response.json()["error"]["code"]
    except Exception:  # not the error shape: the other checks say so
        code = None
    if code in allowed:
        return None
    raise AssertionError(
        f"A request that fits the schema was refused with {status} `{code}`"
        f" (this response allows only {allowed or 'no codes'} for such a request):"
        f" {response.text[:500]}"
    )


def _validator_for(document, schema):
    """A validator of `schema` whose `#/components/...` references resolve in `document`."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def _event_schemas(schema):
    """`{event name: [data schemas]}` of a documented event stream."""
    found = {}
    for alternative in schema.get("oneOf", [schema]):
        properties = alternative.get("properties", {})
        name = properties.get("event", {}).get("const")
        data = properties.get("data", {})
        found.setdefault(name, []).extend(data.get("oneOf", [data]))
    return found


@schemathesis.check
def events_match_their_schemas(ctx, response, case):
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if not content_type.startswith("text/event-stream"):
        return None
    definition = _response_definition(case, response.status_code)
    schema = definition.get("content", {}).get("text/event-stream", {}).get("schema")
    if schema is None:
        raise AssertionError("an event stream the document does not describe")
    document = case.operation.schema.raw_schema
    expected = _event_schemas(schema)
    events = response.text.replace("\r\n", "\n").split("\n\n")
    for raw in events:
        lines = [line for line in raw.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = "message"
        data = []
        for line in lines:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        data = "\n".join(data)
        if name not in expected:
            raise AssertionError(f"an undocumented event `{name}`: {raw[:300]}")
        errors = []
        for alternative in expected[name]:
            try:
                if "const" in alternative:
                    if data == alternative["const"]:
                        break
                    raise jsonschema.ValidationError(f"not {alternative['const']!r}")
                value = json.loads(data)
                _validator_for(document, alternative.get("contentSchema", {})).validate(value)
                break
            except (ValueError, jsonschema.ValidationError) as e:
                errors.append(str(e).split("\n")[0])
        else:
            raise AssertionError(
                f"event `{name}` does not match its documented data: {errors}: {data[:300]}"
            )
    return None


def _jsonl_file(lines):
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


_custom_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@st.composite
def _batch_files(draw):
    endpoint = draw(st.sampled_from(["/v1/jobs", "/v1/chat/completions"]))
    ids = draw(st.lists(_custom_ids, min_size=1, max_size=4, unique=True))
    model = draw(st.sampled_from(["sim:echo", "sim:json", "sim:lorem"]))
    text = draw(st.text(min_size=1, max_size=40).filter(lambda t: t.strip()))
    lines = []
    for custom_id in ids:
        if endpoint == "/v1/jobs":
            body = {"model": model, "messages": [{"role": "user", "content": text}]}
        else:
            body = {"model": model, "messages": [{"role": "user", "content": text}]}
        lines.append({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})
    return _jsonl_file(lines)


@schemathesis.hook
def flatmap_body(ctx, body):
    operation = ctx.operation
    if operation is None or operation.definition.raw.get("operationId") != "createFile":
        return st.just(body)
    if not isinstance(body, dict) or body.get("purpose") != "batch":
        return st.just(body)
    return st.one_of(
        st.just(body),
        _batch_files().map(lambda content: {**body, "file": content}),
    )
