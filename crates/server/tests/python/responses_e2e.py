"""End-to-end checks of the gateway's Responses API with the official `openai` Python SDK.

Run by the Rust test `responses::the_official_openai_sdk_speaks_responses_across_two_nodes`, which
starts two gateway nodes of one cluster (models `echo`, and `tools` on a mock upstream that calls
tools) and passes their addresses in OPENAI_BASE_URL and OPENAI_BASE_URL_OTHER: a conversation
begun on one node is continued on the other. Exits non-zero, with the failing check named, on any
mismatch.
"""

import os
import sys

import openai
from openai import OpenAI

one = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused", max_retries=0)
other = OpenAI(base_url=os.environ["OPENAI_BASE_URL_OTHER"], api_key="unused", max_retries=0)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


# Not streamed.
first = one.responses.create(model="echo", input="Hello from responses", instructions="Be brief.")
check("response id", first.id.startswith("resp_"), first.id)
check("response status", first.status == "completed", repr(first.status))
check("response text", first.output_text.endswith("Hello from responses"), repr(first.output_text))
check("response usage", first.usage.output_tokens > 0 and first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens, repr(first.usage))
check("response stored", first.store is True, repr(first.store))
check("instructions repeated", first.instructions == "Be brief.", repr(first.instructions))

# Continued on the other node: the earlier turn is part of the prompt (echo repeats it all), the
# instructions are not carried over.
second = other.responses.create(model="echo", input="And a second turn", previous_response_id=first.id)
check("continued on the other node", "Hello from responses" in second.output_text and "And a second turn" in second.output_text, repr(second.output_text))
# (The echo model's first answer repeats its whole prompt, instructions included; the second
# prompt starts with the first turn's input instead.)
check("instructions not carried over", second.output_text.startswith("user: Hello from responses") and second.previous_response_id == first.id, repr(second.output_text))
third = one.responses.create(model="echo", input="third", previous_response_id=second.id)
check("three turns in order", third.output_text.index("Hello from responses") < third.output_text.index("And a second turn") < third.output_text.index("third"), repr(third.output_text))

# Read back and deleted, from either node.
fetched = other.responses.retrieve(first.id)
check("retrieved on the other node", fetched.id == first.id and fetched.output_text == first.output_text, repr(fetched))
deleted = one.responses.delete(third.id)
try:
    other.responses.retrieve(third.id)
    check("deleted is gone", False)
except openai.NotFoundError:
    check("deleted is gone", True)
try:
    one.responses.create(model="echo", input="x", previous_response_id=third.id)
    check("continuing a deleted response is refused", False)
except openai.BadRequestError as e:
    check("continuing a deleted response is refused", e.code == "previous_response_not_found" and e.param == "previous_response_id", repr(e.body))

# Not stored when the client says so.
unstored = one.responses.create(model="echo", input="forget me", store=False)
check("store false", unstored.store is False, repr(unstored.store))
try:
    one.responses.retrieve(unstored.id)
    check("unstored is not found", False)
except openai.NotFoundError:
    check("unstored is not found", True)

# Streamed, with the SDK's own accumulation of the events.
with one.responses.stream(model="echo", input="stream these four words") as stream:
    events = list(stream)
    final = stream.get_final_response()
deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
check("stream deltas", "".join(deltas) == "stream these four words" and len(deltas) == 4, repr(deltas))
kinds = [e.type for e in events]
check("stream events", kinds[0] == "response.created" and kinds[-1] == "response.completed" and "response.output_item.added" in kinds, repr(kinds))
check("stream sequence numbers", [e.sequence_number for e in events] == list(range(len(events))), repr([e.sequence_number for e in events]))
check("stream final response", final.output_text == "stream these four words" and final.status == "completed", repr(final))
streamed_next = other.responses.create(model="echo", input="after the stream", previous_response_id=final.id)
check("a streamed response is continued", "stream these four words" in streamed_next.output_text, repr(streamed_next.output_text))

# Tool calls: the model calls the function, the client sends its output back.
tools = [{
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
call = one.responses.create(model="tools", input="What is the weather in Paris?", tools=tools)
calls = [item for item in call.output if item.type == "function_call"]
check("function_call item", len(calls) == 1 and calls[0].name == "get_weather" and calls[0].arguments.replace(" ", "") == '{"city":"Paris"}', repr(call.output))
answer = other.responses.create(
    model="tools",
    tools=tools,
    previous_response_id=call.id,
    input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}],
)
check("answer after the function output", answer.output_text != "" and answer.status == "completed", repr(answer.output))
with one.responses.stream(model="tools", input="What is the weather in Paris?", tools=tools) as stream:
    final = stream.get_final_response()
streamed_calls = [item for item in final.output if item.type == "function_call"]
check("streamed function_call", len(streamed_calls) == 1 and streamed_calls[0].arguments.replace(" ", "") == '{"city":"Paris"}', repr(final.output))

# Errors as the SDK's typed exceptions.
try:
    one.responses.create(model="no-such-model", input="x")
    check("unknown model is NotFoundError", False)
except openai.NotFoundError as e:
    check("unknown model is NotFoundError", "no-such-model" in str(e), str(e))
try:
    one.responses.create(model="echo", input="x", max_output_tokens=0)
    check("bad field is BadRequestError", False)
except openai.BadRequestError as e:
    check("bad field is BadRequestError", e.param == "max_output_tokens", repr(e.body))

print("all Responses SDK checks passed")
