-- One-shot single writes to random distinct pointers, for wrk.
-- The figures in the closing notes of issues 2 and 3 were taken with, in one run:
--   wrk -t2 -c32 -d8s http://127.0.0.1:7070/health
--   wrk -t2 -c32 -d8s -s bench/wrk-put.lua http://127.0.0.1:7070/
-- against `target/release/restm serve`. `restm bench` (issue 7) is to replace this.
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/ptr/k" .. tostring(math.random(1, 100000000)), {["Content-Type"]="application/json"}, '{"v":' .. counter .. '}')
end
