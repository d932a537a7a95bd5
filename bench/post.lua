-- wrk script: POST the body in $BENCH_BODY with $BENCH_CONTENT_TYPE; count statusCode 0 answers;
-- print one JSON line of figures at the end.
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  delivered = 0
end

function response(status, headers, body)
  if string.find(body, '"statusCode": *0') then
    delivered = delivered + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("delivered")
  end
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "delivered": %d, "errors": %d, "non_2xx": %d, "p50_ms": %.2f, "p99_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, total,
    errors.connect + errors.read + errors.write + errors.timeout, errors.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
