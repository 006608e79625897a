-- POST /api/leads for wrk, one new lead per request; used by bench/bench_http.py.
--
--   wrk -t2 -c8 -d10s --timeout 30s -s bench/wrk_leads.lua http://127.0.0.1:PORT -- KEY RUN
--
-- KEY is an API key; RUN (0-999) makes the phones of this wrk run unique in the database:
-- "+1" RUN(3) THREAD(2) COUNTER(8), 14 digits. Services rotate 1, 2, 3. Each thread counts
-- the status codes it got; done() sums them over the threads and prints one line,
-- "BENCH_JSON {...}", with the counts, wrk's latency percentiles (microseconds) and errors.

local threads = {}
local next_tid = 0

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   table.insert(threads, thread)
end

function init(args)
   run = tonumber(args[2] or "0")
   counter = 0
   c201, c202, c409, cother = 0, 0, 0, 0
   headers = {}
   headers["Authorization"] = "Bearer " .. args[1]
   headers["Content-Type"] = "application/json"
end

function request()
   counter = counter + 1
   local phone = string.format("+1%03d%02d%08d", run, tid, counter)
   local body = string.format(
      '{"name": "Bench", "phone": "%s", "city": "Benchville", "service": %d}',
      phone, counter % 3 + 1)
   return wrk.format("POST", "/api/leads", headers, body)
end

function response(status, headers, body)
   if status == 201 then
      c201 = c201 + 1
   elseif status == 202 then
      c202 = c202 + 1
   elseif status == 409 then
      c409 = c409 + 1
   else
      cother = cother + 1
   end
end

function done(summary, latency, requests)
   local t201, t202, t409, tother = 0, 0, 0, 0
   for _, thread in ipairs(threads) do
      t201 = t201 + thread:get("c201")
      t202 = t202 + thread:get("c202")
      t409 = t409 + thread:get("c409")
      tother = tother + thread:get("cother")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "s201": %d, "s202": %d, "s409": %d, ' ..
      '"other": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, ' ..
      '"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}\n',
      summary.requests, summary.duration, t201, t202, t409, tother,
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
