"""End-to-end checks of the gateway's Messages API with the official `anthropic` Python SDK.

Run by the Rust test `anthropic::the_official_anthropic_sdk_end_to_end`, which starts a gateway
(models `echo`, `tools` on a mock upstream that calls tools, and `slow`, whose one place the test
fills so that the next request is shed) and passes its address in ANTHROPIC_BASE_URL. Exits
non-zero, with the failing check named, on any mismatch.
"""

import os
import sys
import threading

import anthropic
from anthropic import Anthropic

client = Anthropic(base_url=os.environ["ANTHROPIC_BASE_URL"], api_key="unused", max_retries=0)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


# A message, not streamed.
message = client.messages.create(
    model="echo",
    max_tokens=100,
    messages=[{"role": "user", "content": "Hello from the SDK"}],
)
check("message text", message.content[0].type == "text" and message.content[0].text == "Hello from the SDK", repr(message))
check("message role and type", message.role == "assistant" and message.type == "message")
check("message stop_reason", message.stop_reason == "end_turn", repr(message.stop_reason))
check("message usage", message.usage.output_tokens == 4 and message.usage.input_tokens > 0, repr(message.usage))
check("message id", message.id.startswith("msg_"), message.id)

# Streamed, with the SDK's own accumulation of the events.
with client.messages.stream(
    model="echo",
    max_tokens=100,
    messages=[{"role": "user", "content": [{"type": "text", "text": "stream these four words"}]}],
) as stream:
    pieces = [text for text in stream.text_stream]
    final = stream.get_final_message()
check("stream pieces", "".join(pieces) == "stream these four words" and len(pieces) == 4, repr(pieces))
check("stream final message", final.content[0].text == "stream these four words" and final.stop_reason == "end_turn", repr(final))
check("stream usage", final.usage.output_tokens == 4, repr(final.usage))

# Tool use, a round trip: the model calls the tool, the client sends its result back.
tools = [{
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
call = client.messages.create(model="tools", max_tokens=100, tools=tools, messages=ask)
check("tool_use stop_reason", call.stop_reason == "tool_use", repr(call))
use = [b for b in call.content if b.type == "tool_use"]
check("tool_use block", len(use) == 1 and use[0].name == "get_weather" and use[0].input == {"city": "Paris"}, repr(call.content))
answer = client.messages.create(
    model="tools",
    max_tokens=100,
    tools=tools,
    messages=ask + [
        {"role": "assistant", "content": call.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id, "content": "Sunny, 21 C"}]},
    ],
)
check("answer after the tool result", answer.stop_reason == "end_turn" and answer.content[0].type == "text", repr(answer))

# Tool use streamed: the SDK assembles the input from input_json_delta events.
with client.messages.stream(model="tools", max_tokens=100, tools=tools, messages=ask) as stream:
    final = stream.get_final_message()
streamed_use = [b for b in final.content if b.type == "tool_use"]
check("streamed tool_use", len(streamed_use) == 1 and streamed_use[0].input == {"city": "Paris"}, repr(final.content))
check("streamed tool_use stop_reason", final.stop_reason == "tool_use", repr(final.stop_reason))

# Counting tokens.
count = client.messages.count_tokens(model="echo", messages=[{"role": "user", "content": "Hello there"}])
check("count_tokens", count.input_tokens > 0, repr(count))

# Errors surface as the SDK's typed exceptions.
try:
    client.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    check("unknown model raises", False)
except anthropic.NotFoundError as e:
    check("unknown model is NotFoundError", e.status_code == 404 and e.body["error"]["type"] == "not_found_error", repr(e.body))

try:
    client.messages.create(model="echo", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    check("max_tokens 0 raises", False)
except anthropic.BadRequestError as e:
    check("max_tokens 0 is BadRequestError", "max_tokens" in e.body["error"]["message"], repr(e.body))

# Overload: `slow` has one place; while a stream holds it, the next request is shed with 529.
holding = threading.Event()
release = threading.Event()


def hold():
    with client.messages.stream(model="slow", max_tokens=100, messages=[{"role": "user", "content": "a b c d e f g h"}]) as stream:
        for _ in stream.text_stream:
            holding.set()
            release.wait(10)
            break


holder = threading.Thread(target=hold)
holder.start()
holding.wait(10)
try:
    client.messages.create(model="slow", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    check("overload raises", False)
except anthropic.APIStatusError as e:
    check("overload is 529 overloaded_error", e.status_code == 529 and e.body["error"]["type"] == "overloaded_error", repr(e.body))
release.set()
holder.join()

print("all Anthropic SDK checks passed")
