-- wrk script for the non-streaming workloads: POST a chat completion request, report a JSON line.
-- The body comes from BENCH_BODY (set by tests/bench/run.py). With BENCH_MAX_REQUESTS=N (use one
-- thread, -t1) the thread stops after N responses and says so on stdout; wrk's main thread sleeps out
-- the whole -d duration regardless, so run.py then sends it SIGINT, and it prints its result at once.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench-model","messages":[{"role":"user","content":"Hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-client"

local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")
if max_requests > 0 then
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen == max_requests then
      io.write("BENCH_COUNT_REACHED\n")
      io.flush()
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
