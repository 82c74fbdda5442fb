"""The one fake OpenAI-compatible LLM server of the project, for the tests and the benchmarks alike.

    from bench.fake_server import FakeServer
    with FakeServer(latency=0.3, slots=16) as server:    # in this process, on a free loopback port
        os.environ["VLLM_BASE_URL"] = server.base_url      # engine "vllm-fake-model"

    python -m bench.fake_server --port 8011 --latency 0.3  # or as a process of its own

It stands in for a batching LLM server (vLLM, SGLang, llama-server with parallel slots): a fixed number
of slots and a fixed latency, seeded faults, a context limit, structured output per backend, and
deterministic replies, so a seeded run gives the same prompts and accuracies every time
(tests/test_behaviour_pinned.py). The engine tests use its `echo` replies and its record of the requests
it received; `routes` answers side routes (a tokenizer, Ollama's /api/show) the way a test needs.

It lives in bench/ because the benchmarks measure against it, in-process and as a separate process,
and a benchmark must not depend on tests/ (pytest's folder, not a package); the tests import it from
here, as they import the benchmarks' other instruments (bench.behaviour_snapshot, bench.scoring_rates).

server.py: its state, faults and answers; handler.py: its HTTP routes; replies.py: what it says;
__main__.py: the command line.
"""

from .server import CONTEXT_ERROR_MESSAGE, FakeServer

__all__ = ["CONTEXT_ERROR_MESSAGE", "FakeServer"]
