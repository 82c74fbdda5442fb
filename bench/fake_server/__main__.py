"""The fake server as a process of its own, for benchmarks and tests that kill and restart it.

    python -m bench.fake_server --port 8011 --latency 0.3 --slots 16 [--rate_500 0.2 ...]

It prints its base URL, then serves until interrupted. Besides the OpenAI routes it serves llama.cpp's
GET /props and POST /tokenize, and GET /stats and POST /stats/reset, so a benchmark in another process
can read its counters.
"""

from __future__ import annotations

import argparse
import sys

from .handler import FLAVOURS
from .hostile import HOSTILE_KINDS
from .replies import MERGE_BUDGETS
from .server import FakeServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    for kind in ("500", "429", "timeout", "malformed"):
        parser.add_argument(f"--rate_{kind}", type=float, default=0.0)
    parser.add_argument("--timeout_sleep", type=float, default=30.0)
    parser.add_argument("--max_context", type=int, default=None)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--no_logprobs", action="store_true")
    parser.add_argument("--quote_rate", type=float, default=0.0,
                        help="share of optimizer replies that copy a training question into the prompt")
    parser.add_argument("--flavour", choices=FLAVOURS, default=None, help="check response_format as this backend")
    parser.add_argument("--no_structured", action="store_true", help="refuse any response_format (HTTP 400)")
    parser.add_argument("--cut_at_max_tokens", action="store_true", help="cut long replies (finish_reason length)")
    parser.add_argument("--distinct_edits", action="store_true",
                        help="every optimizer edit its own numbered rule, so that clients return different prompts")
    parser.add_argument("--merge_budget", choices=MERGE_BUDGETS, default="obey",
                        help="merges keep within their request's stated budget: obey, ignore, second_try")
    parser.add_argument("--hostile", choices=HOSTILE_KINDS, default=None,
                        help="answer chat requests as a broken server or proxy would (bench/fake_server/hostile.py)")
    parser.add_argument("--hostile_requests", type=int, default=None, help="only the first N chat requests")
    parser.add_argument("--retry_after", type=float, default=30.0, help="seconds of --hostile retry_after")
    parser.add_argument("--trickle_seconds", type=float, default=1.0, help="seconds per byte of --hostile trickle")
    args = parser.parse_args(argv)
    try:
        server = FakeServer(latency=args.latency, slots=args.slots, seed=args.seed, rate_500=args.rate_500,
                            rate_429=args.rate_429, rate_timeout=args.rate_timeout,
                            timeout_sleep=args.timeout_sleep, rate_malformed=args.rate_malformed,
                            max_context=args.max_context, model=args.model, logprobs=not args.no_logprobs,
                            port=args.port, quote_rate=args.quote_rate, flavour=args.flavour,
                            structured=not args.no_structured, cut_at_max_tokens=args.cut_at_max_tokens,
                            distinct_edits=args.distinct_edits, merge_budget=args.merge_budget,
                            hostile=args.hostile, hostile_requests=args.hostile_requests,
                            retry_after=args.retry_after, trickle_seconds=args.trickle_seconds)
    except OSError as exc:  # most often the port is taken, by an earlier bench server still running
        print(f"error: cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc}): stop the process using it "
              f"(e.g. an earlier bench server) or pass another --port", file=sys.stderr)
        sys.exit(2)
    print(server.base_url, flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
