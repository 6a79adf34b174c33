"""End-to-end checks of the gateway with the official `openai` Python SDK.

Run by the Rust tests `sdk::openai_python_sdk_end_to_end` (an in-process gateway with failing test
models), `anthropic` (with `tools`, a mock upstream that calls tools) and `cluster::workers` (model
`echo` on a remote worker), which start a server and pass its address in OPENAI_BASE_URL. Exits non-zero, with the failing check named, on any mismatch.
"""

import os
import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused", max_retries=0)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


# Chat, not streamed.
chat = client.chat.completions.create(
    model="echo",
    messages=[{"role": "user", "content": "Hello from the SDK"}],
    max_tokens=50,
)
check("chat content", chat.choices[0].message.content == "Hello from the SDK", repr(chat))
check("chat role", chat.choices[0].message.role == "assistant")
check("chat finish_reason", chat.choices[0].finish_reason == "stop")
check("chat usage", chat.usage.completion_tokens == 4 and chat.usage.total_tokens == 8, repr(chat.usage))
check("chat object", chat.object == "chat.completion")

# Chat, streamed with usage.
stream = client.chat.completions.create(
    model="echo",
    messages=[{"role": "user", "content": "stream these four words"}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage = [], None, None
for chunk in stream:
    if chunk.choices:
        delta = chunk.choices[0].delta
        if delta.content:
            pieces.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    if chunk.usage:
        usage = chunk.usage
check("stream pieces", pieces == ["stream", " these", " four", " words"], repr(pieces))
check("stream finish_reason", finish == "stop")
check("stream usage", usage is not None and usage.completion_tokens == 4, repr(usage))

# Completions.
completion = client.completions.create(model="echo", prompt="Once upon a time")
check("completion text", completion.choices[0].text == "Once upon a time", repr(completion))
check("completion object", completion.object == "text_completion")

# Models.
models = [m.id for m in client.models.list()]
check("models", "echo" in models, repr(models))

# Errors surface as the SDK's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    check("unknown model raises", False)
except openai.NotFoundError as e:
    check("unknown model is NotFoundError", e.status_code == 404 and e.code == "model_not_found", repr(e.body))

try:
    client.chat.completions.create(model="echo", messages=[])
    check("empty messages raises", False)
except openai.BadRequestError as e:
    check("empty messages is BadRequestError", e.status_code == 400 and e.param == "messages", repr(e.body))

# Tool calls, where the server has a model on the mock that calls tools (`tools`).
if "tools" in models:
    tools = [{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }}]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = client.chat.completions.create(model="tools", messages=ask, tools=tools)
    call = called.choices[0].message.tool_calls[0]
    check("tool call", called.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
          and call.function.arguments == '{"city": "Paris"}', repr(called))
    streamed_args, streamed_name, finish = "", None, None
    for chunk in client.chat.completions.create(model="tools", messages=ask, tools=tools, stream=True):
        if chunk.choices:
            for delta in chunk.choices[0].delta.tool_calls or []:
                streamed_name = delta.function.name or streamed_name
                streamed_args += delta.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
    check("streamed tool call", (streamed_name, streamed_args, finish) == ("get_weather", '{"city": "Paris"}', "tool_calls"),
          repr((streamed_name, streamed_args, finish)))
    answer = client.chat.completions.create(model="tools", tools=tools, messages=ask + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny"},
    ])
    check("answer after the tool result", answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content, repr(answer))

# Upstream failures, where the server has the failing test models (the in-process gateway).
if "fail-before" in models:
    try:
        client.chat.completions.create(model="fail-before", messages=[{"role": "user", "content": "x"}])
        check("upstream failure raises", False)
    except openai.InternalServerError as e:
        check("upstream failure is a 502", e.status_code == 502, repr(e.body))

    # A stream cut after its first tokens raises instead of ending quietly.
    received = []
    try:
        for chunk in client.chat.completions.create(
            model="fail-after-2", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
        check("mid-stream failure raises", False, repr(received))
    except openai.APIError as e:
        check("mid-stream failure is an APIError", "upstream connection reset" in e.message, repr(e.message))
        check("tokens before the failure arrived", received == ["one", " two"], repr(received))

print("all SDK checks passed")
