"""Drives `mote serve`'s OpenAI-compatible API with the official `openai`
client, unmodified. Usage: openai_client.py BASE_URL CERT TOKEN MODEL

Checks: /v1/models lists MODEL; a chat completion (greedy) has text and
usage equal to its signed receipt's token counts; the streamed completion
of the same request arrives in several chunks, the first well before the
last, and their concatenation equals the non-streamed text; a plain
completion works; a client that disconnects mid-stream is not an error for
the server (checked by the caller through /metrics).
Prints "openai: N passed, M failed".
"""
import sys
import time

import openai

base, cert, token, model = sys.argv[1:5]
# The client's own HTTP client, told to trust the node's self-signed cert.
client = openai.OpenAI(base_url=base, api_key=token, http_client=openai.DefaultHttpxClient(verify=cert), max_retries=0)
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")


ids = [m.id for m in client.models.list().data]
check("models lists the deployment", model in ids, ids)

messages = [{"role": "user", "content": "What is the capital of France?"}]
resp = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
text = resp.choices[0].message.content
receipt = resp.model_extra["mote_receipt"]
check("chat completion has text", bool(text) and resp.choices[0].finish_reason in ("stop", "length"), resp)
check("usage equals the receipt's token counts",
      resp.usage.prompt_tokens == receipt["prompt_tokens"] and resp.usage.completion_tokens == receipt["completion_tokens"]
      and resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0, (resp.usage, receipt))
check("receipt binds the streamed text", receipt.get("stream_sha256") is not None, receipt)
print("answer:", repr(text))

# Streaming: a longer answer (40 tokens, end-of-sequence ignored), streamed
# and not.
poem = [{"role": "user", "content": "Write a short poem about the sea."}]
whole = client.chat.completions.create(model=model, messages=poem, max_tokens=40, temperature=0,
                                       extra_body={"ignore_eos": True})
text = whole.choices[0].message.content
start = time.monotonic()
arrivals, parts, usage = [], [], None
stream = client.chat.completions.create(model=model, messages=poem, max_tokens=40, temperature=0, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
            arrivals.append(time.monotonic() - start)
end = time.monotonic() - start
check("streamed concatenation equals the non-streamed answer", "".join(parts) == text, ("".join(parts), text))
# Chunks arrive while the job runs: spread over the decode, not in a burst
# at its end.
check("streamed in many chunks, spread over the generation",
      len(parts) >= 10 and arrivals[-1] - arrivals[0] > 0.25 * end, (len(parts), arrivals[0], arrivals[-1], end))
check("streamed usage equals the non-streamed usage",
      usage is not None and usage.completion_tokens == whole.usage.completion_tokens == 40, (usage, whole.usage))

comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
check("plain completion", bool(comp.choices[0].text) and comp.usage.completion_tokens >= 1, comp)

# A client that goes away mid-stream: read one chunk, close the connection.
s = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Write a long story about a cat."}],
                                   max_tokens=400, temperature=0, stream=True)
for chunk in s:
    if any(c.delta.content for c in chunk.choices):
        break
s.close()
check("disconnected mid-stream", True)

print(f"openai: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
