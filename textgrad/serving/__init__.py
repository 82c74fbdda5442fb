"""The serving machinery behind the engines, readable on its own, bottom up:

settings.py      what a runtime gives new engines (cache folder, concurrency cap, timeouts, window, pool size)
stats.py         EngineStats counters and metered() meters of a phase
slots.py         EndpointSlots (the per-endpoint cap, background priority) and a runtime's EndpointCaps
http.py          HttpClients: one pooled httpx client per server, small JSON requests
backends.py      Backend (what each kind of server can do), BACKENDS, the engine-name grammar, route()
cache.py         ResponseCache on disk, CachedReplies (an engine's hits, misses and writes)
interrupt.py     StopFlag (no request after a stop) and StopSignals (main.py's Ctrl-C/SIGTERM/SIGHUP handler)
tokenizers.py    token counts: estimate, a server's /tokenize, tiktoken, GGUF Vocabularies
window.py        what a server says about its context window, and its overflow replies
context.py       EngineContext: one engine's window and counts, fit_reply and overflow errors
server_pool.py   Pool: identical servers behind one URL, the least busy answers; ServerPools
llama_process.py one llama.cpp server process: model file, port, threads, start, wait, stop
embedded.py      EmbeddedPool: the embedded llama.cpp servers, restarted once, stopped on exit or signal
reply_formats.py ReplyFormats: --structured_output and the engines that fell back to tags
transport.py     Transport: connect, send with retries under the cap, word failures; ChatReply
budget.py        requests fitted to the window: fields cut in the middle, items dropped
runtime.py       Runtime: all of the above one process shares, current_runtime(), use_runtime()
llamacpp_server.py  llama-cpp-python's server with GET /props (run by scripts/llamacpp_serve.sh)

Nothing here keeps process state in module globals: a Runtime holds it, and tests make their own.
"""
