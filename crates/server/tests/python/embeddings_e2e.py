"""End-to-end checks of the gateway's embeddings API with the official `openai` Python SDK.

Run by the Rust test `embeddings::the_official_openai_sdk_embeds_a_hundred_inputs_in_order`, which
starts a gateway with `vectors` (the echo backend's vectors) and `upstream` (a mock server, in
batches of 8) and passes its address in OPENAI_BASE_URL. Exits non-zero, with the failing check
named, on any mismatch.
"""

import os
import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused", max_retries=0)


def close(a, b):
    """Vectors equal as float32 (base64 carries float32 exactly; JSON numbers are read as float64)."""
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(a, b))


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


texts = [f"input number {i}" for i in range(100)]
for model in ["vectors", "upstream"]:
    # The SDK asks for base64 unless told otherwise, and decodes it.
    listed = client.embeddings.create(model=model, input=texts)
    check(f"{model}: 100 vectors", len(listed.data) == 100, repr(len(listed.data)))
    check(f"{model}: indexes in order", [d.index for d in listed.data] == list(range(100)))
    backwards = client.embeddings.create(model=model, input=list(reversed(texts)), encoding_format="float")
    check(
        f"{model}: each vector belongs to its input",
        all(close(b.embedding, a.embedding) for b, a in zip(backwards.data, reversed(listed.data))),
    )
    one = client.embeddings.create(model=model, input=texts[42], encoding_format="float")
    check(f"{model}: one input", len(one.data) == 1 and close(one.data[0].embedding, listed.data[42].embedding))
    check(f"{model}: usage", listed.usage.prompt_tokens > 0 and listed.usage.total_tokens == listed.usage.prompt_tokens, repr(listed.usage))

shorter = client.embeddings.create(model="vectors", input="short", dimensions=4, encoding_format="float")
check("dimensions passed on", len(shorter.data[0].embedding) == 4, repr(shorter.data[0].embedding))
tokens = client.embeddings.create(model="upstream", input=[[1, 2, 3], [4, 5]], encoding_format="float")
check("token arrays", len(tokens.data) == 2)

try:
    client.embeddings.create(model="echo", input="x")
    check("a chat model is refused", False)
except openai.BadRequestError as e:
    check("a chat model is refused", e.param == "model", repr(e.body))
try:
    client.embeddings.create(model="vectors", input="x", encoding_format="hex")
    check("a bad encoding_format is refused", False)
except openai.BadRequestError as e:
    check("a bad encoding_format is refused", e.param == "encoding_format", repr(e.body))

print("all embeddings SDK checks passed")
