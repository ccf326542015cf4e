-- wrk script for bench/identity.sh: GET /_matrix/identity/v2 (the ping) through the same
-- per-request Lua callback as identity-info.lua (a path taken in turn from a list), so that the
-- report can show what the load generator's callback costs on its own. Usage: wrk ... -s
-- identity-ping.lua URL
local paths = {}
local next_path = 1

function init(args)
  for i = 1, 2000 do
    paths[i] = "/_matrix/identity/v2?n=" .. i
  end
  next_path = math.random(#paths)
end

function request()
  local path = paths[next_path]
  next_path = next_path % #paths + 1
  return wrk.format("GET", path)
end
