"""The junction of the two halves: LLM backends (`llm`), the retrieval-augmented `Pipeline` that
answers with cited sources (and carries domain adapters), and QA evaluation (`evaluate`)."""
