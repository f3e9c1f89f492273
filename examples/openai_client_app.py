"""An existing app written for OpenAI's API, pointed at `ragkit serve` by changing the base URL.

    ragkit serve --index indexes/pydocs --port 8000        # in another terminal
    python examples/openai_client_app.py "How do I read a file line by line?"

RAGKIT_BASE_URL (default http://127.0.0.1:8000/v1) and RAGKIT_API_KEY (when the server requires
one) configure it. The app code is plain `openai`; ragkit's sources arrive in the `ragkit` field.
"""
import os
import sys

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("RAGKIT_BASE_URL", "http://127.0.0.1:8000/v1"),
                api_key=os.environ.get("RAGKIT_API_KEY", "not-needed"))
question = " ".join(sys.argv[1:]) or "How do I read a file line by line?"
model = client.models.list().data[0].id

# streaming, as chat UIs do; the last chunk carries the numbered sources
sources = []
for chunk in client.chat.completions.create(model=model, stream=True, max_tokens=96,
                                            messages=[{"role": "user", "content": question}]):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    extra = (chunk.model_extra or {}).get("ragkit")
    if extra:
        sources = extra["sources"]
print()
for s in sources:
    print(f"[{s['n']}] {s['title'] or s['doc_id']} ({s['chunk_id']}){' cited' if s['cited'] else ''}")

# embeddings from the same server (the index's encoder)
emb = client.embeddings.create(model=client.models.list().data[1].id, input=[question])
print(f"embedding: {len(emb.data[0].embedding)} dimensions")
