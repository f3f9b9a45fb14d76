-- wrk script for bench/bench_burst.py: every request is a distinct Docker Hub
-- push (a unique tag and pushed_at), POSTed to the project's webhook URL
-- with its ?token=. At the end, one line "BENCH-JSON {...}" with the summary.
--
-- Arguments (after --): path prefix, run tag. wrk runs one Lua state per
-- thread, so each thread numbers its own requests and adds its thread id.

local counter = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  run = args[2]
  counter = 0
end

function request()
  counter = counter + 1
  local tag = run .. "-" .. thread_id .. "-" .. counter
  local body = '{"callback_url": "https://registry.hub.docker.com/u/bench/app/hook/0f1e2d3c/", '
    .. '"push_data": {"pushed_at": ' .. (1767225600 + counter) .. ', "pusher": "bench", "tag": "' .. tag
    .. '", "images": []}, "repository": {"repo_name": "bench/app", "name": "app", "namespace": "bench"}}'
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "latency_us": {"mean": %.1f, "p50": %d, '
      .. '"p90": %d, "p99": %d, "p999": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
