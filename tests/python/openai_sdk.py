"""The official OpenAI Python SDK against a running Chorus, unchanged but for its base URL.

Run by tests/e2e/sdk.rs with OPENAI_BASE_URL (the edge's /v1) and OPENAI_API_KEY (a Chorus key).
Exits non-zero with the failed check on stderr.
"""

import json
import os
import sys
import tempfile
import time

import openai
from openai import OpenAI

client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment
MODEL = os.environ.get("CHORUS_SDK_MODEL", "fast")


def check(condition, what):
    if not condition:
        sys.exit(f"openai sdk check failed: {what}")


# A chat completion.
completion = client.chat.completions.create(
    model=MODEL,
    messages=[
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    temperature=0.2,
)
check(completion.object == "chat.completion", f"object: {completion}")
check(completion.id.startswith("chatcmpl-"), f"id: {completion.id}")
message = completion.choices[0].message
check(message.role == "assistant", f"role: {message}")
check("What is the capital of France?" in message.content, f"content: {message.content!r}")
check(completion.choices[0].finish_reason == "stop", f"finish_reason: {completion}")
check(completion.usage.total_tokens > 0, f"usage: {completion.usage}")

# A streamed one, with its usage.
stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Stream this answer, please."}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage = [], None, None
for chunk in stream:
    check(chunk.object == "chat.completion.chunk", f"chunk: {chunk}")
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
check(len(pieces) >= 3, f"streamed in pieces: {pieces}")
check("Stream this answer, please." in streamed, f"streamed text: {streamed!r}")
check(finish == "stop", f"finish_reason: {finish}")
check(usage is not None and usage.completion_tokens > 0, f"usage: {usage}")

# Errors arrive as the SDK's exceptions.
try:
    client.chat.completions.create(model="no-such-route", messages=[{"role": "user", "content": "x"}])
    check(False, "an unknown route must fail")
except openai.NotFoundError as e:
    check("no-such-route" in str(e), f"the error names the route: {e}")
    check(e.code == "model_not_found", f"the code is OpenAI's: {e.code}")

# A Batch API round trip: upload, create, poll, download.
lines = [
    {
        "custom_id": f"sdk-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Case {i}?"}]},
    }
    for i in range(5)
]
with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    for line in lines:
        f.write(json.dumps(line) + "\n")
    path = f.name
with open(path, "rb") as f:
    uploaded = client.files.create(file=f, purpose="batch")
check(uploaded.id.startswith("file-") and uploaded.purpose == "batch", f"file: {uploaded}")
batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"suite": "openai-sdk"},
)
check(batch.object == "batch", f"batch: {batch}")
deadline = time.time() + 60
while batch.status not in ("completed", "failed", "cancelled", "expired"):
    check(time.time() < deadline, f"the batch did not finish: {batch}")
    time.sleep(0.2)
    batch = client.batches.retrieve(batch.id)
check(batch.status == "completed", f"status: {batch}")
counts = batch.request_counts
check((counts.total, counts.completed, counts.failed) == (5, 5, 0), f"counts: {counts}")
check(batch.metadata == {"suite": "openai-sdk"}, f"metadata: {batch.metadata}")
output = client.files.content(batch.output_file_id).text
results = [json.loads(line) for line in output.splitlines() if line]
check(sorted(r["custom_id"] for r in results) == [f"sdk-{i}" for i in range(5)], f"output: {output}")
for result in results:
    body = result["response"]["body"]
    check(result["response"]["status_code"] == 200, f"line: {result}")
    check(body["object"] == "chat.completion", f"body: {body}")
    i = result["custom_id"].split("-")[1]
    check(f"Case {i}?" in body["choices"][0]["message"]["content"], f"answer: {body}")
listed = client.batches.list(limit=10)
check(any(b.id == batch.id for b in listed.data), f"the batch is listed: {listed}")

print("openai sdk: chat, stream, errors and batch round trip ok")
