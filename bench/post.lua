-- wrk script: POST the body in $BENCH_BODY with $BENCH_CONTENT_TYPE; count statusCode 0 answers;
-- print one JSON line of figures at the end. With $BENCH_VARY (an urlencoded body), every form is different and
-- comes from another client and sender: a userData pair, the fromAddress and X-Forwarded-For change each time.
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")

local threads = {}
local vary = os.getenv("BENCH_VARY")  -- a number of its own for each run, so that no run repeats another's forms

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  delivered = 0
  sent = 0
end

if vary then
  function request()
    sent = sent + 1
    local n = (tonumber(vary) % 100000) * 100000000 + id * 10000000 + sent
    local body = string.gsub(wrk.body, "fromAddress=", "fromAddress=n" .. n .. ".", 1) .. "&userData=n%3D" .. n
    local client = string.format("10.%d.%d.%d", n % 250, math.floor(n / 250) % 250, math.floor(n / 62500) % 250 + 1)
    return wrk.format("POST", nil, {["Content-Type"] = wrk.headers["Content-Type"], ["X-Forwarded-For"] = client},
                      body)
  end
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
